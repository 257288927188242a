"""Every activation site of the weight-sparse GPT, listed once: its hook name, its kind, its
width, and the names other vocabularies give it.

The model places a hook point at each site; pruning takes its node sites from here, the
bridges and the analyses their residual-stream sites, the official-checkpoint converter its
AbsTopK site names, and the model its aliases. A site added anywhere else is a test failure
(tests/test_sites.py checks every consumer against this list and this list against a GPT).

Layer sites, inside `blocks.{i}` (B batch, T sequence, H heads; widths from the GPTConfig):

    hook                  kind              width    AbsTopK     node  residual  TL shorthand
    hook_resid_pre        resid_in          d_model  -           -     attn_in   resid_pre
    ln1.hook_normalized   ln1.normalized    d_model  -           -     -         normalized, ln1
    attn.hook_in          attn.act_in       d_model  attn_in     yes   -         in, attn
    attn.hook_q/_k/_v     attn.q/.k/.v      d_attn   attn_q/k/v  yes   -         q / k / v
    attn.hook_pattern     attn.pattern      [B, H, T, T]  -      -     -         pattern
    attn.hook_z           attn.y            d_attn   -           -     -         z
    hook_attn_out         attn.resid_delta  d_model  attn_out    yes   -         attn_out
    hook_resid_mid        resid_mid         d_model  -           -     mlp_in    resid_mid
    ln2.hook_normalized   ln2.normalized    d_model  -           -     -         normalized, ln2
    mlp.hook_in           mlp.act_in        d_model  mlp_in      yes   -         in, mlp
    mlp.hook_pre          mlp.pre_act       d_mlp    -           -     -         pre
    mlp.hook_post         mlp.post_act      d_mlp    mlp_neuron  yes   -         post
    hook_mlp_out          mlp.resid_delta   d_model  mlp_out     yes   -         mlp_out
    hook_resid_post       resid_post        d_model  -           -     -         resid_post

Model sites: `hook_embed`, `hook_pos_embed` (with pos_emb), `ln_final.hook_normalized`; and
`final_resid`, the last block's `hook_resid_post` under its own name (an optional node site,
the bridges' `final`), which is not a hook point of its own.

- **kind**: the official circuit_sparsity location name where the official model has one
  (its hook alias is `{i}.{kind}`: `0.attn.q`), else one in the same style.
- **AbsTopK**: the official `afrac_loctypes` name of the AbsTopK that produces the activation
  (`GPTConfig.afrac_sites` picks among them).
- **node**: a pruning node site; exactly the AbsTopK sites, so a node is a channel the sparse
  model passes on.
- **residual**: the residual-stream sites the bridges pair and the analyses compare, named
  `L{i}.attn_in` / `L{i}.mlp_in` / `final` (the stream entering a sublayer, before its norm).

q, k, v and z stay flat (channel c belongs to head c // d_head) because AbsTopK ranks all heads
jointly and pruning nodes are these flat channels, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Width = Literal["d_model", "d_attn", "d_mlp"]


class Widths(Protocol):
    """What a site's width is read from (a `GPTConfig`)."""

    n_layer: int
    d_model: int
    d_attn: int
    d_mlp: int
    pos_emb: bool


@dataclass(frozen=True)
class Site:
    """One activation site (see the module docstring for every one)."""

    kind: str
    """Layer-relative kind: `attn.q`, `mlp.post_act`, `resid_in`, ...; `final_resid`."""
    hook: str
    """Hook name: relative to `blocks.{i}` for a layer site, the full name for a model site."""
    width: Width | None
    """The config attribute that gives the activation's last dimension; None: the attention
    pattern, whose last dimension is the sequence."""
    official: bool = False
    """Whether the official circuit_sparsity model names this location (`{i}.{kind}`)."""
    abstopk: str | None = None
    """The official `afrac_loctypes` name of the AbsTopK that produces this activation."""
    residual: str | None = None
    """Its residual-stream name (`attn_in`, `mlp_in`, `final`) if it is one of those sites."""
    requires: str | None = None
    """The config flag without which the model has no such hook point (`pos_emb`)."""

    @property
    def node(self) -> bool:
        """Whether its channels are pruning nodes (the AbsTopK sites; `final_resid` on
        request)."""
        return self.abstopk is not None

    @property
    def per_head(self) -> bool:
        """Whether channel c belongs to head c // d_head (q, k, v, z)."""
        return self.width == "d_attn"

    def name(self, layer: int | None = None) -> str:
        """The full hook name: `blocks.{layer}.{hook}` for a layer site."""
        return self.hook if layer is None else f"blocks.{layer}.{self.hook}"

    def channels(self, cfg: Widths) -> int:
        """The activation's last dimension in a model of config `cfg`."""
        if self.width is None:
            raise ValueError(f"{self.kind} is not a channel site")
        return getattr(cfg, self.width)

    def shorthand(self, layer: int) -> tuple[str | int, ...]:
        """Its TransformerLens cache shorthand: ("q", layer) or ("normalized", layer, "ln1")."""
        sub, _, leaf = self.hook.rpartition(".")
        short = leaf.removeprefix("hook_")
        return (short, layer, sub) if sub else (short, layer)


LAYER_SITES: tuple[Site, ...] = (
    Site("resid_in", "hook_resid_pre", "d_model", official=True, residual="attn_in"),
    Site("ln1.normalized", "ln1.hook_normalized", "d_model"),
    Site("attn.act_in", "attn.hook_in", "d_model", official=True, abstopk="attn_in"),
    Site("attn.q", "attn.hook_q", "d_attn", official=True, abstopk="attn_q"),
    Site("attn.k", "attn.hook_k", "d_attn", official=True, abstopk="attn_k"),
    Site("attn.v", "attn.hook_v", "d_attn", official=True, abstopk="attn_v"),
    Site("attn.pattern", "attn.hook_pattern", None),
    Site("attn.y", "attn.hook_z", "d_attn", official=True),
    Site("attn.resid_delta", "hook_attn_out", "d_model", official=True, abstopk="attn_out"),
    Site("resid_mid", "hook_resid_mid", "d_model", official=True, residual="mlp_in"),
    Site("ln2.normalized", "ln2.hook_normalized", "d_model"),
    Site("mlp.act_in", "mlp.hook_in", "d_model", official=True, abstopk="mlp_in"),
    Site("mlp.pre_act", "mlp.hook_pre", "d_mlp"),
    Site("mlp.post_act", "mlp.hook_post", "d_mlp", official=True, abstopk="mlp_neuron"),
    Site("mlp.resid_delta", "hook_mlp_out", "d_model", official=True, abstopk="mlp_out"),
    Site("resid_post", "hook_resid_post", "d_model"),
)
"""The sites of every block, in the order a forward pass reaches them."""

INPUT_SITES: tuple[Site, ...] = (
    Site("embed", "hook_embed", "d_model"),
    Site("pos_embed", "hook_pos_embed", "d_model", requires="pos_emb"),
)
"""The model's sites before block 0."""

OUTPUT_SITES: tuple[Site, ...] = (
    Site("ln_final.normalized", "ln_final.hook_normalized", "d_model"),
)
"""The model's sites after the last block."""

FINAL_RESID = Site("final_resid", "hook_resid_post", "d_model", official=True, residual="final")
"""The residual stream the final norm reads: the last block's `hook_resid_post`, under the
official model's name for it."""

NODE_SITES: tuple[Site, ...] = tuple(s for s in LAYER_SITES if s.node)
"""The layer sites whose channels are pruning nodes, in forward order."""

ABSTOPK_SITES: tuple[str, ...] = tuple(s.abstopk for s in LAYER_SITES if s.abstopk)
"""The sites AbsTopK can run at, by the official circuit_sparsity model's names: each
sublayer's input (attn_in, mlp_in) and residual write (attn_out, mlp_out), q, k and v, and the
MLP's hidden neurons (mlp_neuron)."""


def final_resid_name(n_layer: int) -> str:
    """The hook name of `final_resid` in a model of `n_layer` blocks."""
    return FINAL_RESID.name(n_layer - 1)


def hook_names(cfg: Widths) -> list[str]:
    """Every hook name of a GPT of config `cfg`, in forward order (`GPT.hook_names`)."""
    present = [s for s in INPUT_SITES if s.requires is None or getattr(cfg, s.requires)]
    names = [s.name() for s in present]
    names += [s.name(i) for i in range(cfg.n_layer) for s in LAYER_SITES]
    return names + [s.name() for s in OUTPUT_SITES]


def official_aliases(n_layer: int) -> dict[str, str]:
    """The official circuit_sparsity names (`{i}.attn.act_in`, ..., `final_resid`) → ours."""
    aliases = {
        f"{i}.{s.kind}": s.name(i) for i in range(n_layer) for s in LAYER_SITES if s.official
    }
    aliases[FINAL_RESID.kind] = final_resid_name(n_layer)
    return aliases


def residual_sites(n_layer: int) -> list[tuple[str, str]]:
    """The 2·n_layer + 1 residual-stream sites as (name, hook name), in forward order: the
    stream entering each block's attention (`L{i}.attn_in`) and MLP (`L{i}.mlp_in`), and
    leaving the last block (`final`)."""
    sites = [
        (f"L{i}.{s.residual}", s.name(i)) for i in range(n_layer) for s in LAYER_SITES if s.residual
    ]
    return [*sites, (str(FINAL_RESID.residual), final_resid_name(n_layer))]
