"""A circuit in the official circuit_sparsity format, out and back in.

The official viewer (`circuit_sparsity/viz.py`) reads a pruned circuit from `viz_data.pt`
(`viz/<model>/<task>/<sweep>/<k>/viz_data.pt`, loaded with `torch.load(weights_only=True)`),
whose `circuit_data` maps each node location to the channels the circuit keeps:

    {"0.attn.act_in": LongTensor[n], "0.attn.q": ..., ..., "1.mlp.resid_delta": ...,
     "final_resid": ...}

Locations are `{layer}.{kind}` with the kinds of `sparse_tf.sites` (our hook
`blocks.0.attn.hook_q` is `0.attn.q`), and `final_resid` for the residual stream the final norm
reads. `save_viz_data` writes that dict (every node site of the circuit's layers, empty where
nothing is kept) with `num_total_nodes` and `prune_config` beside it; the viewer's other
entries (`samples`, `importances`: per-node ablation losses, activation samples, task
samples) are measurements our pruning does not make, so the file holds the circuit, not
everything the viewer displays. `read_viz_data` reads `circuit_data` back as circuit.json's
`nodes` (hook names), from our file or a released one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparse_tf.filenames import VIZ_DATA_FILE
from sparse_tf.io import atomic_dir
from sparse_tf.pruning.circuit import Circuit, CircuitError
from sparse_tf.sites import FINAL_RESID, NODE_SITES, final_resid_name

_BY_HOOK = {s.hook: s for s in NODE_SITES}
_BY_KIND = {s.kind: s for s in NODE_SITES}
_LAYER_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LOCATION = re.compile(r"^(\d+)\.(.+)$")


def official_location(name: str) -> str:
    """The official location name of one of our node hook names (`blocks.0.attn.hook_q` ->
    `0.attn.q`; the last block's `hook_resid_post` -> `final_resid`)."""
    m = _LAYER_NAME.match(name)
    if m and m.group(2) == FINAL_RESID.hook:
        return FINAL_RESID.kind  # the only resid_post node a circuit has: the last block's
    if not m or m.group(2) not in _BY_HOOK:
        raise CircuitError(f"nodes[{name!r}]: not a node site (circuit_data has no name for it)")
    return f"{m.group(1)}.{_BY_HOOK[m.group(2)].kind}"


def to_circuit_data(circuit: Circuit) -> dict[str, list[int]]:
    """circuit_data of a circuit: official location -> kept channels, ascending; every node
    site of the layers the circuit spans appears (empty when nothing is kept), as in the
    released files."""
    data = {official_location(name): sorted(idx) for name, idx in circuit.nodes.items()}
    layers = [int(m.group(1)) for n in circuit.nodes if (m := _LAYER_NAME.match(n))]
    full = {
        f"{i}.{s.kind}": data.get(f"{i}.{s.kind}", [])
        for i in range(max(layers, default=-1) + 1)
        for s in NODE_SITES
    }
    if FINAL_RESID.kind in data:
        full[FINAL_RESID.kind] = data[FINAL_RESID.kind]
    return full


def from_circuit_data(data: dict[str, Any], n_layer: int, source: str) -> dict[str, list[int]]:
    """circuit.json `nodes` (our hook names -> channels) of an official circuit_data dict of
    a model with `n_layer` blocks; locations that keep nothing are left out."""
    nodes: dict[str, list[int]] = {}
    for location, indices in data.items():
        if location == "prune_config":  # some released files keep it inside circuit_data
            continue
        if location == FINAL_RESID.kind:
            name = final_resid_name(n_layer)
        elif (m := _LOCATION.match(location)) and m.group(2) in _BY_KIND:
            if int(m.group(1)) >= n_layer:
                raise CircuitError(f"{source}: {location}: the model has {n_layer} layers")
            name = _BY_KIND[m.group(2)].name(int(m.group(1)))
        else:
            raise CircuitError(f"{source}: {location!r} is not a circuit_sparsity node location")
        values = indices.tolist() if isinstance(indices, Tensor) else indices
        if not isinstance(values, list) or not all(type(i) is int and i >= 0 for i in values):
            raise CircuitError(f"{source}: {location}: not a list of channel indices")
        if values:
            nodes[name] = sorted(values)
    return nodes


def save_viz_data(circuit: Circuit, folder: Path) -> Path:
    """Write `folder/viz_data.pt` (the folder must not exist; written atomically): the
    circuit's circuit_data as int64 tensors, num_total_nodes and prune_config."""
    circuit_data = {
        loc: torch.tensor(idx, dtype=torch.int64) for loc, idx in to_circuit_data(circuit).items()
    }
    viz = {
        "circuit_data": circuit_data,
        "num_total_nodes": circuit.n_total_nodes,
        "prune_config": {
            **circuit.config,
            "task": circuit.task,
            "target_loss": circuit.target_loss,
            "exported_from": "sparse_tf circuit.json",
        },
    }
    with atomic_dir(Path(folder)) as tmp:
        torch.save(viz, tmp / VIZ_DATA_FILE)
    return Path(folder) / VIZ_DATA_FILE


def read_viz_data(path: str | Path, n_layer: int) -> dict[str, list[int]]:
    """The circuit of a `viz_data.pt` (a file, or its folder) as circuit.json `nodes`, for a
    model of `n_layer` blocks. Read with `torch.load(weights_only=True)`: tensors and plain
    containers only, never code."""
    path = Path(path)
    file = path / VIZ_DATA_FILE if path.is_dir() else path
    try:
        viz = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, a pickle of code: one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CircuitError(f"{file}: not a viz_data file ({first})") from None
    if not isinstance(viz, dict) or not isinstance(viz.get("circuit_data"), dict):
        raise CircuitError(f"{file}: has no circuit_data dict")
    return from_circuit_data(viz["circuit_data"], n_layer, str(file))
