"""circuit.html: a self-contained page (inline SVG and JavaScript; no server, no network) that
shows a circuit.

- The graph: one row per node site (labelled by its hook name, as `model.hooks` and
  `run_with_cache` call it), layer 0 at the bottom; each kept node a circle, each edge a line
  (blue: positive weight, red: negative; width: |weight| relative to the largest of its type).
  Residual links (a write to a later read of the same channel; not edges, see `edges`) arc
  between rows, grey and dashed. The graph fits the panel's width at any size (a row of
  hundreds of nodes packs them closer); wheel or +/- zoom, drag pans. At most `MAX_EDGES`
  edges (the strongest) and `MAX_LINKS` links are drawn, and a note says how many of how many.
- The test prompts as text (a newline shows as ↵ and breaks the line), and the two classes.
- Click a node: its edges are highlighted, and a panel shows its activations in the circuit
  (everything else mean-ablated) on task prompts of both classes: the value at the decision
  position for every prompt of each class, and prompts coloured token by token.
- The loss-vs-k curve of the kept pruning run, with the target and the chosen size; the
  sufficiency/necessity numbers; the hyperparameter search.

`render_html(view)` is a pure function of `ViewData` (what `viewer_data` measures), so a test can
render a circuit without a model.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.data.tokenizer import eot_id
from sparse_tf.model import GPT
from sparse_tf.pruning.circuit import Circuit
from sparse_tf.pruning.edges import RESID, edge_blocks
from sparse_tf.pruning.masks import keep_gates, mean_ablation
from sparse_tf.pruning.nodes import NodeSite
from sparse_tf.sites import NODE_SITES
from sparse_tf.tasks import PairSource, encode_pairs
from sparse_tf.tasks.encoding import batches

MAX_EDGES = 20_000
"""Edges drawn at most (the strongest by |weight|); the page says how many it left out."""
MAX_LINKS = 5_000
"""Residual links drawn at most (in forward order: they all carry weight 1, so none is
stronger); apart from the edges, so that links never crowd out weighted edges."""
MAX_TOKEN_NODES = 400
"""Nodes with token-by-token activations at most (every node gets decision-position values)."""


@dataclass(frozen=True)
class ViewData:
    circuit: dict[str, Any]
    sites: list[dict[str, Any]]
    """Every node site in forward order: name (the hook name), layer, kind, width, d_head,
    nodes (kept)."""
    edges: list[list[Any]]
    """[src site, src position in its node list, dst site, dst position, weight, type]: the
    drawn edges and residual links (type "resid")."""
    edges_left_out: int
    """Edges (not links) measured but not drawn: the page states drawn + left out."""
    prompts: list[dict[str, Any]]
    """Prompts shown token by token: class, tokens (strings), target, alternative."""
    acts: dict[str, list[list[float]]]
    """"site:channel" → per shown prompt, the activation at every token."""
    last: dict[str, list[float]]
    """"site:channel" → the activation at the decision position of every scored prompt."""
    last_classes: list[str]
    """The class ("a" or "b") of every scored prompt."""
    classes: dict[str, str]
    """What the two classes are (the correct candidate of each)."""
    links_left_out: int = 0
    """Residual links measured but not drawn."""


@torch.no_grad()
def viewer_data(
    model: GPT,
    tok: Tokenizer,
    task: PairSource,
    circuit: Circuit,
    sites: Sequence[NodeSite],
    means: Mapping[str, Tensor],
    *,
    shown_pairs: int = 3,
    scored_pairs: int = 32,
    seed: int = 0,
    amp: bool = False,
) -> ViewData:
    """Measure what the page shows: the circuit's edges, and its nodes' activations on test
    prompts with everything outside the circuit mean-ablated."""
    device = next(model.parameters()).device
    index = {s.name: i for i, s in enumerate(sites)}
    edges, links = [], []
    for b in edge_blocks(model, sites, circuit.nodes):
        nz = torch.nonzero(b.weights)  # [n_edges, 2]: (dst position, src position)
        values = b.weights[nz[:, 0], nz[:, 1]].tolist()
        for (d, s), w in zip(nz.tolist(), values, strict=True):
            (links if b.type == RESID else edges).append(
                [index[b.src], s, index[b.dst], d, round(w, 5), b.type]
            )
    edges, left_out = strongest(edges, MAX_EDGES)
    links_left_out = max(0, len(links) - MAX_LINKS)

    encoded = encode_pairs(task.pairs(max(shown_pairs, scored_pairs), seed, "test"), tok)
    batch = next(batches(encoded, len(encoded), model.cfg.n_ctx, eot_id(tok))).to(device)
    gates = keep_gates(sites, circuit.nodes, device)
    kept = [s for s in sites if circuit.nodes.get(s.name)]
    with (
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp),
        mean_ablation(model, gates, means),
    ):
        _, cache = model.run_with_cache(
            batch.tokens, positions=batch.lengths - 1, names_filter=[s.name for s in kept]
        )
    rows = torch.arange(len(batch.lengths), device=device)
    n_shown = min(2 * shown_pairs, len(batch.lengths))  # a file's test split may be small
    token_budget = MAX_TOKEN_NODES
    acts: dict[str, list[list[float]]] = {}
    last: dict[str, list[float]] = {}
    for s in kept:
        a = cache[s.name].float()  # [M, T, width]
        for c in circuit.nodes[s.name]:
            key = f"{index[s.name]}:{c}"
            last[key] = _round(a[rows, batch.lengths - 1, c].tolist())
            if token_budget > 0:
                acts[key] = [
                    _round(a[m, : int(batch.lengths[m]), c].tolist()) for m in range(n_shown)
                ]
                token_budget -= 1
    prompts = [
        {
            "cls": "ab"[m % 2],
            "tokens": [tok.decode([t]) for t in encoded.prompts[m][: int(batch.lengths[m])]],
            "target": tok.decode([encoded.targets[m]]),
            "alternative": tok.decode([encoded.alternatives[m]]),
        }
        for m in range(n_shown)
    ]
    return ViewData(
        circuit=circuit.to_dict(),
        sites=[
            {
                "name": s.name,
                "layer": s.layer,
                "kind": s.kind,
                "width": s.width,
                "d_head": model.cfg.d_head,
                "nodes": sorted(circuit.nodes.get(s.name, [])),
            }
            for s in sites
        ],
        edges=edges + links[:MAX_LINKS],
        edges_left_out=left_out,
        prompts=prompts,
        acts=acts,
        last=last,
        last_classes=["ab"[m % 2] for m in range(len(batch.lengths))],
        classes={"a": prompts[0]["target"], "b": prompts[1]["target"]},
        links_left_out=links_left_out,
    )


def strongest(edges: list[list[Any]], limit: int) -> tuple[list[list[Any]], int]:
    """The `limit` edges of largest |weight| (all of them, in their order, if they fit) and
    how many were left out."""
    if len(edges) <= limit:
        return edges, 0
    return sorted(edges, key=lambda e: -abs(e[4]))[:limit], len(edges) - limit


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def render_html(view: ViewData) -> str:
    """The page, with `view` embedded as JSON."""
    # No "<", ">" or "&" inside the <script> element: "</script>" would end it and "<!--"
    # changes how the browser parses the rest; JSON reads the escapes back as the characters.
    # (Task prompts are code: `</script>`, quotes and `&` do occur in them.)
    data = json.dumps(asdict(view), separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        data = data.replace(char, escape)
    title = html.escape(f"circuit: {view.circuit['task']}")
    # The node kinds whose channels belong to heads (q, k, v): the page names a node's head.
    head_kinds = json.dumps([s.kind for s in NODE_SITES if s.per_head])
    page = resources.files("sparse_tf.pruning").joinpath("viewer.html").read_text()
    # One pass: a task named "__DATA__" must not have the data substituted into its title.
    values = {"TITLE": title, "DATA": data, "HEAD_KINDS": head_kinds}
    return re.sub(r"__(TITLE|DATA|HEAD_KINDS)__", lambda m: values[m.group(1)], page)
