"""Edges of a circuit: nonzero weight entries that connect two kept nodes (the paper's count).

    type       from (kept)          to (kept)             through
    attn.q     layer i attn.act_in  layer i attn.q        qkv.weight (q rows)
    attn.k     layer i attn.act_in  layer i attn.k        qkv.weight (k rows)
    attn.v     layer i attn.act_in  layer i attn.v        qkv.weight (v rows)
    attn.out   layer i attn.v       layer i attn.resid_delta  out_proj.weight (value channel c
                                                          is head-output channel c)
    mlp.in     layer i mlp.act_in   layer i mlp.post_act  in_proj.weight
    mlp.out    layer i mlp.post_act layer i mlp.resid_delta   out_proj.weight

Queries and keys meet in a dot product, not through a weight, so a q-k pair is two nodes and no
edge between them (as in the paper). An edge belongs to the layer of the node it enters. The
same code counts dense models, where every entry is nonzero.

Residual links are counted apart and never summed into the edges: a residual write reaches
every later read of the same channel (through the reader's RMSNorm gain; identity into
final_resid) with no weight matrix between them, and the paper's count (its Fig. 4 circuit: 12
nodes, 9 edges) and the official viewer's (within-layer weight blocks only) leave them out. The
viewer draws them, so that a reader can follow a channel from the layer that writes it to the
layer that reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_tf.model import GPT
from sparse_tf.pruning.nodes import NodeSite, check_nodes
from sparse_tf.sites import FINAL_RESID

EDGE_TYPES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out")
RESID = "resid"
"""The type of a residual link's block (not an edge type: see the module docstring)."""
# Node kinds (`sparse_tf.sites`) where a sublayer reads the residual stream and writes it.
READS = ("attn.act_in", "mlp.act_in", FINAL_RESID.kind)
WRITES = ("attn.resid_delta", "mlp.resid_delta")

Nodes = Mapping[str, Sequence[int]]
"""Hook name → kept channel indices."""


@dataclass(frozen=True)
class EdgeBlock:
    """The weights between the kept nodes of two sites: `weights[i, j]` connects
    `src_index[j]` at `src` to `dst_index[i]` at `dst`; zero means no edge."""

    type: str
    layer: int
    src: str
    dst: str
    src_index: Tensor  # [n_src] int64
    dst_index: Tensor  # [n_dst] int64
    weights: Tensor  # [n_dst, n_src] float32, on the CPU


@dataclass(frozen=True)
class EdgeCount:
    total: int
    """Edges: nonzero weight entries between kept nodes (residual links not included)."""
    by_type: dict[str, int]
    by_layer: dict[str, dict[str, int]]
    """Layer index as a string → edge type → count."""
    resid_links: int
    """Residual write → later read links between kept nodes of the same channel."""
    resid_links_by_layer: dict[str, int]
    """Layer of the read (`"final"` for final_resid) → residual links."""


def edge_blocks(model: GPT, sites: Sequence[NodeSite], nodes: Nodes) -> Iterator[EdgeBlock]:
    """Every pair of sites that a weight connects, restricted to the kept nodes (a name or
    index outside `sites` is a NodeError)."""
    check_nodes(nodes, sites)
    by_layer: dict[tuple[int, str], NodeSite] = {(s.layer, s.kind): s for s in sites}
    d_attn = model.cfg.d_attn

    def index(site: NodeSite) -> Tensor:
        return torch.as_tensor(sorted(nodes.get(site.name, ())), dtype=torch.long)

    def block(type_: str, src: NodeSite, dst: NodeSite, weight: Tensor) -> EdgeBlock:
        si, di = index(src), index(dst)
        w = weight.detach().float().cpu()[di][:, si]
        return EdgeBlock(type_, dst.layer, src.name, dst.name, si, di, w)

    for i, blk in enumerate(model.blocks):
        s = {kind: by_layer[(i, kind)] for (layer, kind) in by_layer if layer == i}
        if not s:
            continue
        qkv = blk.attn.qkv.weight  # [3 · d_attn, d_model], rows q, k, v
        for j, kind in enumerate(("q", "k", "v")):
            rows = qkv[j * d_attn : (j + 1) * d_attn]
            yield block(f"attn.{kind}", s["attn.act_in"], s[f"attn.{kind}"], rows)
        yield block("attn.out", s["attn.v"], s["attn.resid_delta"], blk.attn.out_proj.weight)
        yield block("mlp.in", s["mlp.act_in"], s["mlp.post_act"], blk.mlp.in_proj.weight)
        yield block("mlp.out", s["mlp.post_act"], s["mlp.resid_delta"], blk.mlp.out_proj.weight)

    writes = [s for s in sites if s.kind in WRITES]
    for read in (s for s in sites if s.kind in READS):
        if read.kind == FINAL_RESID.kind:
            gain = torch.ones(read.width)
        else:
            blk = model.blocks[read.layer]
            norm = blk.ln1 if read.kind == "attn.act_in" else blk.ln2
            gain = norm.weight.detach().float().cpu()  # [d_model]
        for write in (w for w in writes if w.sublayer < read.sublayer):
            si, di = index(write), index(read)
            same = (di[:, None] == si[None, :]).float()  # [n_dst, n_src]: same channel
            weights = same * gain[di, None]
            yield EdgeBlock(RESID, read.layer, write.name, read.name, si, di, weights)


def count_edges(model: GPT, sites: Sequence[NodeSite], nodes: Nodes) -> EdgeCount:
    by_type = dict.fromkeys(EDGE_TYPES, 0)
    by_layer: dict[str, dict[str, int]] = {}
    links: dict[str, int] = {}
    for b in edge_blocks(model, sites, nodes):
        n = int((b.weights != 0).sum())
        key = "final" if b.layer >= model.cfg.n_layer else str(b.layer)
        if b.type == RESID:
            links[key] = links.get(key, 0) + n
            continue
        by_type[b.type] += n
        layer = by_layer.setdefault(key, dict.fromkeys(EDGE_TYPES, 0))
        layer[b.type] += n
    return EdgeCount(sum(by_type.values()), by_type, by_layer, sum(links.values()), links)
