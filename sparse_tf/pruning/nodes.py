"""Pruning nodes: every channel at the eight node sites of each layer (optionally the final
residual stream), named by the model's hook points.

    site                kind                 width     what a node is
    blocks.i.attn.hook_in    attn.act_in        d_model   a residual channel the attention reads
    blocks.i.attn.hook_q     attn.q             H·d_head  a query channel (head = c // d_head)
    blocks.i.attn.hook_k     attn.k             H·d_head  a key channel
    blocks.i.attn.hook_v     attn.v             H·d_head  a value channel
    blocks.i.hook_attn_out   attn.resid_delta   d_model   a residual channel the attention writes
    blocks.i.mlp.hook_in     mlp.act_in         d_model   a residual channel the MLP reads
    blocks.i.mlp.hook_post   mlp.post_act       d_mlp     an MLP neuron
    blocks.i.hook_mlp_out    mlp.resid_delta    d_model   a residual channel the MLP writes
    blocks.{L-1}.hook_resid_post  final_resid   d_model   a channel the unembedding reads

All sites but the final residual sit after the model's AbsTopK, so a node is a channel the
sparse model actually passes on. The kinds are the official circuit_sparsity location names
(`{i}.attn.q` ...), which the model also accepts as hook aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from sparse_tf.errors import SparseTFError
from sparse_tf.model import GPTConfig

# (kind, hook name inside blocks.{i}), in the order a forward pass reaches them.
LAYER_SITES: tuple[tuple[str, str], ...] = (
    ("attn.act_in", "attn.hook_in"),
    ("attn.q", "attn.hook_q"),
    ("attn.k", "attn.hook_k"),
    ("attn.v", "attn.hook_v"),
    ("attn.resid_delta", "hook_attn_out"),
    ("mlp.act_in", "mlp.hook_in"),
    ("mlp.post_act", "mlp.hook_post"),
    ("mlp.resid_delta", "hook_mlp_out"),
)
FINAL_RESID = "final_resid"


@dataclass(frozen=True)
class NodeSite:
    """One hook point whose channels are pruning nodes."""

    name: str
    """Canonical hook name, e.g. `blocks.0.attn.hook_q`: the key in circuit.json and means."""
    kind: str
    """Location kind: `attn.q`, `mlp.post_act`, ..., `final_resid`."""
    layer: int
    """Block index; n_layer for the final residual."""
    width: int

    @property
    def alias(self) -> str:
        """The official circuit_sparsity name (`0.attn.q`, `final_resid`)."""
        return self.kind if self.kind == FINAL_RESID else f"{self.layer}.{self.kind}"

    @property
    def sublayer(self) -> int:
        """Position along the residual stream: 2i for layer i's attention, 2i + 1 for its MLP,
        2·n_layer for the final residual. A write at position p reaches reads at p' > p."""
        if self.kind == FINAL_RESID:
            return 2 * self.layer
        return 2 * self.layer + (1 if self.kind.startswith("mlp.") else 0)


def node_sites(cfg: GPTConfig, final_resid: bool = True) -> list[NodeSite]:
    """The node sites of a model with config `cfg`, in forward order; with the final residual
    unless `final_resid` is False (the default of `PruneConfig.final_resid` too)."""
    d_attn = cfg.n_head * cfg.d_head
    widths = {
        "attn.act_in": cfg.d_model,
        "attn.q": d_attn,
        "attn.k": d_attn,
        "attn.v": d_attn,
        "attn.resid_delta": cfg.d_model,
        "mlp.act_in": cfg.d_model,
        "mlp.post_act": cfg.d_mlp,
        "mlp.resid_delta": cfg.d_model,
    }
    sites = [
        NodeSite(f"blocks.{i}.{hook}", kind, i, widths[kind])
        for i in range(cfg.n_layer)
        for kind, hook in LAYER_SITES
    ]
    if final_resid:
        name = f"blocks.{cfg.n_layer - 1}.hook_resid_post"
        sites.append(NodeSite(name, FINAL_RESID, cfg.n_layer, cfg.d_model))
    return sites


class NodeError(SparseTFError):
    """A set of nodes names a site or channel the model does not have."""


def check_nodes(
    nodes: Mapping[str, Sequence[int] | Tensor], sites: Sequence[NodeSite], source: str = "nodes"
) -> None:
    """NodeError, naming the entry, unless every key of `nodes` is one of `sites` and every
    index is a channel of it (0 <= i < width): a hand-edited circuit.json must not have its
    negative indices wrap around or its unknown sites ignored."""
    widths = {s.name: s.width for s in sites}
    for name, indices in nodes.items():
        if name not in widths:
            hint = " (a --final-resid circuit: take node_sites(cfg, final_resid=True))"
            raise NodeError(
                f"{source}: {name!r} is not a node site of this model"
                f"{hint if name.endswith('hook_resid_post') else ''}"
            )
        values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        for i in values:
            if type(i) is not int or not 0 <= i < widths[name]:
                raise NodeError(f"{source}: {name} channel {i!r} is not in [0, {widths[name]})")
