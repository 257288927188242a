"""When a sparse matmul beats cuBLAS: the measured crossover densities that drive the dispatch.

`spmm_crossovers.json` (next to this file) is written by `benchmarks/spmm_speed.py --write`:
for each measured (tokens, in, out) shape, the largest density at which the sparse kernel,
its transposing copies included, was at least 5% faster than cuBLAS on the masked dense
weight — at that density and at every lower one measured — separately for the forward product
and for dX (the measured speedups are stored beside them).
A shape that was never faster has no crossover (null): cuBLAS always.

A layer's shape is matched to the nearest measured one (in log tokens, log in, log out); below
the smallest measured token count cuBLAS is used, since launch overhead was not measured there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

FILE = "spmm_crossovers.json"


@dataclass(frozen=True)
class SpmmPlan:
    """Which products of one linear layer run on the sparse kernel (the rest on cuBLAS)."""

    forward: bool
    dx: bool

    @property
    def any(self) -> bool:
        return self.forward or self.dx


DENSE = SpmmPlan(forward=False, dx=False)
SPARSE = SpmmPlan(forward=True, dx=True)


@dataclass(frozen=True)
class Crossover:
    tokens: int
    d_in: int
    d_out: int
    forward: float | None  # sparse forward when density <= this
    dx: float | None


@cache
def table() -> tuple[tuple[Crossover, ...], list[dict[str, Any]]]:
    """The measured crossovers and how they were measured (per run: device, date, command,
    shapes)."""
    data = json.loads(resources.files(__package__).joinpath(FILE).read_text())
    rows = tuple(
        Crossover(r["tokens"], r["in"], r["out"], r["forward"], r["dx"]) for r in data["shapes"]
    )
    return rows, data["measured"]


@lru_cache(maxsize=4096)  # called for every linear layer of every forward pass
def plan(tokens: int, d_in: int, d_out: int, density: float) -> SpmmPlan:
    """The dispatch for a layer [d_in -> d_out] at `density` on `tokens` rows of input."""
    rows, _ = table()
    if not rows or tokens < min(r.tokens for r in rows):
        return DENSE

    def distance(r: Crossover) -> float:
        return sum(
            abs(math.log(a / b)) for a, b in ((tokens, r.tokens), (d_in, r.d_in), (d_out, r.d_out))
        )

    near = min(rows, key=distance)
    return SpmmPlan(
        forward=near.forward is not None and density <= near.forward,
        dx=near.dx is not None and density <= near.dx,
    )
