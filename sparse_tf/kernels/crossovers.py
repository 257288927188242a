"""When the sparse matmul beats cuBLAS, per GPU model: the measurements that drive dispatch.

Three layers of evidence, each checking the one before:

1. **Tables per device model.** `spmm_crossovers.json` beside this file ships the tables of
   the H100 and the H200 (written by `benchmarks/spmm_speed.py --write`, or taken from a cache
   that the first use below filled on such a GPU; each run records its command). A table
   measured on this machine (`sparse-tf calibrate`, or on first use) is kept in the cache,
   `$SPARSE_TF_CACHE/spmm_crossovers/<device>.json`, and its rows take precedence.
2. **First use.** A layer shape that its device's table does not hold (another GPU, another
   width) is measured when a layer of that shape first asks, for that shape only (seconds),
   and merged into the cache.
3. **Verification.** The first time in a process that a plan sends a product of some shape
   and density (to within a factor √2) to the sparse kernel, both ways are timed on the
   layer's own tensors; a sparse product that is not faster than cuBLAS goes back to cuBLAS
   for the rest of the process, and the log says so once. A wrong or stale table therefore
   costs one measurement, never a slower run.

A crossover is the largest density at which the sparse product, its transposing copy
included, beat cuBLAS on the masked dense weight by MARGIN (5%) — at that density and at every
lower one measured — separately for the forward and for dX, per token count. A layer uses the
row of its shape at the nearest measured token count (in log tokens); below the smallest one,
cuBLAS (launch overhead dominates there).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_tf.io import cache_dir, read_json, waiting_lock, write_json
from sparse_tf.kernels.csr import csr_of
from sparse_tf.kernels.plan import DENSE, SpmmPlan
from sparse_tf.kernels.spmm import spmm_t
from sparse_tf.kernels.timing import median_ms
from sparse_tf.kernels.transpose import feature_major

FILE = "spmm_crossovers.json"
MARGIN = 1.05
"""Speed-up over cuBLAS a sparse product needs to be chosen: below it the gain is within
run-to-run noise and not worth the extra launches."""
TOKENS = (4096, 16384)
"""Token counts (rows of the activation) measured per shape."""
DENSITIES = tuple(1 / 2**i for i in range(4, 11))
"""Densities measured per shape: 1/16 ... 1/1024."""


@dataclass(frozen=True)
class Crossover:
    """The measured crossovers of one layer shape at one token count."""

    tokens: int
    d_in: int
    d_out: int
    forward: float | None  # sparse forward when density <= this; None: never
    dx: float | None


@dataclass(frozen=True)
class DeviceTable:
    """Every crossover known for one device model, and how each was measured."""

    device: str
    rows: tuple[Crossover, ...]
    measured: tuple[dict[str, Any], ...]  # per run: device, date, torch, command, shapes

    def shapes(self) -> set[tuple[int, int]]:
        return {(r.d_in, r.d_out) for r in self.rows}


def crossover(densities: Sequence[float], speedups: Sequence[float], margin: float) -> float | None:
    """Largest density whose speedup, and that of every lower density, is >= margin."""
    best = None
    for d, s in sorted(zip(densities, speedups, strict=True)):
        if s < margin:
            break
        best = d
    return best


def _rows(entries: list[dict[str, Any]]) -> tuple[Crossover, ...]:
    return tuple(Crossover(r["tokens"], r["in"], r["out"], r["forward"], r["dx"]) for r in entries)


@cache
def shipped() -> dict[str, DeviceTable]:
    """The tables shipped with sparse_tf, by device name."""
    data = json.loads(resources.files(__package__).joinpath(FILE).read_text())
    return {
        name: DeviceTable(name, _rows(entry["shapes"]), tuple(entry["measured"]))
        for name, entry in data["devices"].items()
    }


def cache_file(device: str) -> Path:
    """Where the crossovers measured on this machine for `device` are kept."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"
    return cache_dir() / "spmm_crossovers" / f"{slug}.json"


def _read_entry(path: Path) -> dict[str, Any]:
    entry = read_json(path)
    if not isinstance(entry, dict) or not {"shapes", "measured"} <= entry.keys():
        raise ValueError(f"{path}: not a crossover table (re-measure: sparse-tf calibrate)")
    return entry


def table(device: str) -> DeviceTable:
    """Every crossover known for `device`: the shipped rows, overridden by the rows measured
    on this machine (same token count and shape)."""
    base = shipped().get(device, DeviceTable(device, (), ()))
    path = cache_file(device)
    if not path.is_file():
        return base
    entry = _read_entry(path)
    local = _rows(entry["shapes"])
    replaced = {(r.tokens, r.d_in, r.d_out) for r in local}
    rows = tuple(r for r in base.rows if (r.tokens, r.d_in, r.d_out) not in replaced) + local
    return DeviceTable(device, rows, base.measured + tuple(entry["measured"]))


def device_name(device: torch.device) -> str:
    """The device model the tables are keyed by ("NVIDIA H100 80GB HBM3"; "cpu" elsewhere)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def random_sparse(
    d_out: int, d_in: int, density: float, device: torch.device
) -> tuple[Tensor, int]:
    """[d_out, d_in] fp32 normal weights with exactly max(1, round(density · numel)) nonzeros
    at uniformly random places, and that count."""
    numel = d_out * d_in
    kept = max(1, round(density * numel))
    w = torch.zeros(numel, device=device)
    idx = torch.randperm(numel, device=device)[:kept]
    w[idx] = torch.randn(kept, device=device)
    return w.view(d_out, d_in), kept


def time_products(
    x: Tensor, dy: Tensor, w: Tensor, kept: int, iters: int, dtype: torch.dtype = torch.bfloat16
) -> dict[str, float]:
    """Median ms of the forward and dX of one layer on cuBLAS (masked dense weight) and on the
    sparse kernel (transposing copy of the gathered activation included; the formats, built
    once per optimizer step, are not): keys cublas_fwd, sparse_fwd, cublas_dx, sparse_dx."""
    wd = w.to(dtype)
    fwd, bwd = csr_of(w, kept, dtype), csr_of(w, kept, dtype, transpose=True)
    fns = {
        "cublas_fwd": lambda: F.linear(x, wd),
        "sparse_fwd": lambda: spmm_t(feature_major(x, dtype), fwd),
        "cublas_dx": lambda: dy @ wd,
        "sparse_dx": lambda: spmm_t(feature_major(dy, dtype), bwd),
    }
    with torch.no_grad():
        return median_ms(fns, iters, device=x.device)


def measure_shape(
    device: torch.device,
    d_in: int,
    d_out: int,
    tokens: Sequence[int],
    densities: Sequence[float],
    iters: int = 10,
    margin: float = MARGIN,
) -> list[dict[str, Any]]:
    """Crossover rows (the JSON form, with the measured speedups) of one layer shape."""
    rows = []
    for t in tokens:
        x = torch.randn(t, d_in, device=device, dtype=torch.bfloat16)
        dy = torch.randn(t, d_out, device=device, dtype=torch.bfloat16)
        speed_f, speed_dx = [], []
        for density in densities:
            w, kept = random_sparse(d_out, d_in, density, device)
            ms = time_products(x, dy, w, kept, iters)
            speed_f.append(ms["cublas_fwd"] / ms["sparse_fwd"])
            speed_dx.append(ms["cublas_dx"] / ms["sparse_dx"])
        rows.append(
            {
                "tokens": t,
                "in": d_in,
                "out": d_out,
                "forward": crossover(densities, speed_f, margin),
                "dx": crossover(densities, speed_dx, margin),
                "speedups": {  # density -> [forward, dX], transposes included
                    str(d): [round(f, 3), round(x, 3)]
                    for d, f, x in zip(densities, speed_f, speed_dx, strict=True)
                },
            }
        )
    return rows


def merge(entry: dict[str, Any], rows: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """`entry` (a device's {"measured", "shapes"}) with `rows` replacing rows of the same token
    count and shape, and `run` recorded."""
    new = {(r["tokens"], r["in"], r["out"]) for r in rows}
    kept = [r for r in entry.get("shapes", []) if (r["tokens"], r["in"], r["out"]) not in new]
    return {"measured": [*entry.get("measured", []), run], "shapes": kept + rows}


def run_record(device: str, command: str, shapes: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """How a measurement was taken: device, date, torch version, command, shapes."""
    return {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": command,
        "shapes": sorted(shapes),
    }


ITERS = 10
"""Timed repetitions per product of a calibration (medians)."""


def calibrate(
    device: torch.device,
    shapes: Sequence[tuple[int, int]],
    command: str,
    tokens: Sequence[int] | None = None,
    densities: Sequence[float] | None = None,
    iters: int = ITERS,
) -> list[dict[str, Any]]:
    """Measure the crossovers of layer shapes (d_in, d_out) on `device` (at TOKENS and
    DENSITIES unless given) and merge them into this machine's cache for its device model;
    returns the measured rows."""
    with _cache_lock(device_name(device)):
        return _measure(device, shapes, command, tokens, densities, iters)


def _measure(
    device: torch.device,
    shapes: Sequence[tuple[int, int]],
    command: str,
    tokens: Sequence[int] | None,
    densities: Sequence[float] | None,
    iters: int,
) -> list[dict[str, Any]]:
    """`calibrate`'s work, under its lock."""
    name = device_name(device)
    tokens, densities = tokens or TOKENS, densities or DENSITIES
    rows = [
        r
        for d_in, d_out in shapes
        for r in measure_shape(device, d_in, d_out, tokens, densities, iters)
    ]
    path = cache_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = _read_entry(path) if path.is_file() else {"device": name}
    record = run_record(name, command, [(r["tokens"], r["in"], r["out"]) for r in rows])
    write_json(path, {"device": name, **merge(entry, rows, record)})
    plan.cache_clear()
    return rows


def _cache_lock(device: str) -> AbstractContextManager[None]:
    """One process of this machine at a time measures `device` and updates its cache: the
    processes that share a GPU (`--jobs`, torchrun's ranks) would otherwise measure the same
    shapes at once, on a GPU the others keep busy, and overwrite each other's rows."""
    path = cache_file(device)
    return waiting_lock(
        path.with_name(path.name + ".lock"),
        f"sparse_tf: waiting for another process measuring the sparse matmul on {device}",
    )


def layer_shapes(d_model: int, d_mlp: int, d_head: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of a GPT block's sparse matrices: qkv, attention out, MLP in, MLP out
    (the attention width is the heads that fit in d_model)."""
    d_attn = d_model // d_head * d_head
    return [(d_model, 3 * d_attn), (d_attn, d_model), (d_model, d_mlp), (d_mlp, d_model)]


def calibration_table(device: str, rows: Sequence[dict[str, Any]]) -> str:
    """The rows `calibrate` measured on `device`, as a Markdown table under a title line."""
    show = lambda v: "never" if v is None else f"1/{round(1 / v)}"  # noqa: E731
    lines = [
        f"crossovers on {device} (sparse where the density is at most):",
        "| tokens | in -> out | forward | dX |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['tokens']} | {r['in']} -> {r['out']} | {show(r['forward'])} | {show(r['dx'])} |"
        for r in rows
    ]
    return "\n".join(lines)


@lru_cache(maxsize=4096)  # called for every linear layer of every forward pass
def plan(device: torch.device, tokens: int, d_in: int, d_out: int, density: float) -> SpmmPlan:
    """The table's dispatch for a layer [d_in -> d_out] at `density` on `tokens` rows of
    input; a shape the device's table lacks is measured first (once, into the cache)."""
    name = device_name(device)
    known = table(name)
    if (d_in, d_out) not in known.shapes():
        with _cache_lock(name):
            known = table(name)  # another process may have measured it meanwhile
            if (d_in, d_out) not in known.shapes():
                print(
                    f"sparse_tf: measuring when the sparse matmul beats cuBLAS for {d_in} -> "
                    f"{d_out} on {name} (once; cached in {cache_file(name)})",
                    file=sys.stderr,
                )
                command = "first use: " + " ".join(sys.argv)
                _measure(device, [(d_in, d_out)], command, None, None, ITERS)
                known = table(name)
    rows = [r for r in known.rows if (r.d_in, r.d_out) == (d_in, d_out)]
    if tokens < min(r.tokens for r in rows):
        return DENSE
    near = min(rows, key=lambda r: abs(math.log(tokens / r.tokens)))
    return SpmmPlan(
        forward=near.forward is not None and density <= near.forward,
        dx=near.dx is not None and density <= near.dx,
    )


_VERDICTS: dict[tuple[Any, ...], SpmmPlan] = {}


Product = tuple[torch.device, int, int, int, torch.dtype, float]
"""A linear layer's product as verification sees it: device, tokens, d_in, d_out, the dtype it
computes in, the weight's density."""


def _verdict_key(plan_: SpmmPlan, product: Product) -> tuple[Any, ...]:
    """What one verification covers: densities within a factor √2 share it."""
    *shape, density = product
    return (*shape, round(2 * math.log2(density)), plan_)


def known_verdict(plan_: SpmmPlan, product: Product) -> SpmmPlan | None:
    """What `verified` made of `plan_` for such a product, or None if it has not measured it
    yet in this process (a CUDA graph's capture cannot measure)."""
    return _VERDICTS.get(_verdict_key(plan_, product))


def verified(plan_: SpmmPlan, x: Tensor, weight: Tensor, kept: int, dtype: torch.dtype) -> SpmmPlan:
    """`plan_` with every sparse product that is not faster than cuBLAS on this layer's own
    tensors turned back to cuBLAS; each (device, tokens, shape, dtype, density to within √2,
    plan) is timed once per process."""
    d_out, d_in = weight.shape
    x2 = x.reshape(-1, d_in)
    density = kept / weight.numel()
    key = _verdict_key(plan_, (x.device, x2.shape[0], d_in, d_out, dtype, density))
    if key not in _VERDICTS:
        with torch.no_grad():
            xd = x2.to(dtype)
            dy = torch.randn(x2.shape[0], d_out, device=x.device, dtype=dtype)
            ms = time_products(xd, dy, weight.detach(), kept, iters=5, dtype=dtype)
        keep_fwd = plan_.forward and ms["sparse_fwd"] < ms["cublas_fwd"]
        keep_dx = plan_.dx and ms["sparse_dx"] < ms["cublas_dx"]
        for product, chosen, kept_ in (
            ("forward", plan_.forward, keep_fwd),
            ("dX", plan_.dx, keep_dx),
        ):
            if chosen and not kept_:
                sparse_ms, dense_ms = (
                    (ms["sparse_fwd"], ms["cublas_fwd"])
                    if product == "forward"
                    else (ms["sparse_dx"], ms["cublas_dx"])
                )
                print(
                    f"sparse_tf: the sparse {product} of {d_in} -> {d_out} at density "
                    f"1/{round(1 / density)} on {x2.shape[0]} tokens ran at "
                    f"{dense_ms / sparse_ms:.2f}x cuBLAS on {device_name(x.device)}; using cuBLAS "
                    "(re-measure with: sparse-tf calibrate)",
                    file=sys.stderr,
                )
        _VERDICTS[key] = SpmmPlan(forward=keep_fwd, dx=keep_dx)
    return _VERDICTS[key]
