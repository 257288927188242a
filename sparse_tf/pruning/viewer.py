"""circuit.html: a self-contained page (inline SVG and JavaScript; no server, no network) that
shows a circuit.

- The graph: one row per node site, layer 0 at the bottom; each kept node a circle, each edge a
  line (blue: positive weight, red: negative; width: |weight| relative to the largest of its
  type). Residual links (a write to a later read of the same channel; not edges, see
  `edges`) arc between rows, grey and dashed.
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
from sparse_tf.pruning.edges import edge_blocks
from sparse_tf.pruning.masks import keep_gates, mean_ablation
from sparse_tf.pruning.nodes import NodeSite
from sparse_tf.sites import FINAL_RESID, NODE_SITES
from sparse_tf.tasks import PairSource, encode_pairs
from sparse_tf.tasks.encoding import batches

MAX_EDGES = 20_000
"""Edges drawn at most (the strongest); the page says how many it left out."""
MAX_TOKEN_NODES = 400
"""Nodes with token-by-token activations at most (every node gets decision-position values)."""


@dataclass(frozen=True)
class ViewData:
    circuit: dict[str, Any]
    sites: list[dict[str, Any]]
    """Every node site in forward order: name, label, layer, kind, width, nodes (kept)."""
    edges: list[list[Any]]
    """[src site, src position in its node list, dst site, dst position, weight, type]."""
    edges_left_out: int
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
    edges = []
    for b in edge_blocks(model, sites, circuit.nodes):
        nz = torch.nonzero(b.weights)  # [n_edges, 2]: (dst position, src position)
        values = b.weights[nz[:, 0], nz[:, 1]].tolist()
        for (d, s), w in zip(nz.tolist(), values, strict=True):
            edges.append([index[b.src], s, index[b.dst], d, round(w, 5), b.type])
    left_out = max(0, len(edges) - MAX_EDGES)
    if left_out:
        edges = sorted(edges, key=lambda e: -abs(e[4]))[:MAX_EDGES]

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
                "label": s.kind if s.kind == FINAL_RESID.kind else f"L{s.layer} {s.kind}",
                "layer": s.layer,
                "kind": s.kind,
                "width": s.width,
                "d_head": model.cfg.d_head,
                "nodes": sorted(circuit.nodes.get(s.name, [])),
            }
            for s in sites
        ],
        edges=edges,
        edges_left_out=left_out,
        prompts=prompts,
        acts=acts,
        last=last,
        last_classes=["ab"[m % 2] for m in range(len(batch.lengths))],
        classes={"a": prompts[0]["target"], "b": prompts[1]["target"]},
    )


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def render_html(view: ViewData) -> str:
    """The page, with `view` embedded as JSON."""
    # No "<", ">" or "&" inside the <script> element: "</script>" would end it and "<!--"
    # changes how the browser parses the rest; JSON reads the escapes back as the characters.
    data = json.dumps(asdict(view), separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        data = data.replace(char, escape)
    title = html.escape(f"circuit: {view.circuit['task']}")
    # The node kinds whose channels belong to heads (q, k, v): the page names a node's head.
    head_kinds = json.dumps([s.kind for s in NODE_SITES if s.per_head])
    page = resources.files("sparse_tf.pruning").joinpath("viewer.html").read_text()
    page = page.replace("__HEAD_KINDS__", head_kinds)
    return page.replace("__TITLE__", title).replace("__DATA__", data)
