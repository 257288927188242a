"""Pruning nodes: every channel at the eight node sites of each layer (optionally the final
residual stream), named by the model's hook points.

The node sites are the AbsTopK sites of `sparse_tf.sites` (`NODE_SITES`): a sublayer's input
(`attn.act_in`, `mlp.act_in`), q, k and v (`attn.q` ..., head = channel // d_head), the MLP
neurons (`mlp.post_act`) and a sublayer's residual write (`attn.resid_delta`,
`mlp.resid_delta`); on request also `final_resid`, the channels the unembedding reads.

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
from sparse_tf.sites import FINAL_RESID, NODE_SITES, final_resid_name


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
        return self.kind if self.kind == FINAL_RESID.kind else f"{self.layer}.{self.kind}"

    @property
    def sublayer(self) -> int:
        """Position along the residual stream: 2i for layer i's attention, 2i + 1 for its MLP,
        2·n_layer for the final residual. A write at position p reaches reads at p' > p."""
        if self.kind == FINAL_RESID.kind:
            return 2 * self.layer
        return 2 * self.layer + (1 if self.kind.startswith("mlp.") else 0)


def node_sites(cfg: GPTConfig, final_resid: bool = True) -> list[NodeSite]:
    """The node sites of a model with config `cfg`, in forward order; with the final residual
    unless `final_resid` is False (the default of `PruneConfig.final_resid` too)."""
    sites = [
        NodeSite(site.name(i), site.kind, i, site.channels(cfg))
        for i in range(cfg.n_layer)
        for site in NODE_SITES
    ]
    if final_resid:
        name = final_resid_name(cfg.n_layer)
        sites.append(NodeSite(name, FINAL_RESID.kind, cfg.n_layer, FINAL_RESID.channels(cfg)))
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
