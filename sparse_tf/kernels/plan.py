"""Which products of a linear layer run on the sparse matmul: the dispatch's answer."""

from __future__ import annotations

from dataclasses import dataclass


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
