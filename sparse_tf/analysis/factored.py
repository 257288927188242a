"""Factored versus joint belief geometry (Shai et al. 2026).

Data from F independent processes needs a belief per factor. Stored jointly (one point of the
product space) it spans Π S_f − 1 dimensions; factored (each factor in its own subspace),
Σ (S_f − 1). These functions measure which one activations look like:

    belief_geometry(beliefs)                 the two baselines from the true beliefs
    belief_regression(acts, beliefs)         R² of a linear read-out of each factor's belief
    vary_one(per_factor_acts)                per-factor subspaces from "vary one factor, freeze
                                             the rest" batches: dims, union dims, overlaps vs k/d
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from sparse_tf.analysis.linalg import Array, _as2d, dims_at_variance, weighted_pca


def _flat(beliefs: Sequence[ArrayLike]) -> list[Array]:
    out = [np.asarray(b, dtype=np.float64) for b in beliefs]
    return [b.reshape(-1, b.shape[-1]) for b in out]


def _rank(x: Array, tol: float = 1e-8) -> int:
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return int((s > tol * max(s[0], 1e-300)).sum())


@dataclasses.dataclass(frozen=True)
class BeliefGeometry:
    factored_dims: int
    """Dims at `threshold` of the concatenated factor beliefs."""
    factored_rank: int
    joint_dims: int
    """Dims at `threshold` of the joint belief (outer product of the factors' beliefs)."""
    joint_rank: int
    threshold: float


def belief_geometry(beliefs: Sequence[ArrayLike], threshold: float = 0.95) -> BeliefGeometry:
    """The factored and joint baselines from true beliefs (per factor [..., S_f], the same
    samples in the same order)."""
    flat = _flat(beliefs)
    factored = np.concatenate(flat, axis=1)
    joint = flat[0]
    for b in flat[1:]:
        joint = np.einsum("ni,nj->nij", joint, b).reshape(len(joint), -1)
    _, ratios_f = weighted_pca(factored)
    _, ratios_j = weighted_pca(joint)
    return BeliefGeometry(
        factored_dims=dims_at_variance(ratios_f, threshold),
        factored_rank=_rank(factored),
        joint_dims=dims_at_variance(ratios_j, threshold),
        joint_rank=_rank(joint),
        threshold=threshold,
    )


def belief_regression(acts: ArrayLike, beliefs: Sequence[ArrayLike]) -> list[float]:
    """Per factor, the R² of the least-squares affine read-out of its belief from the
    activations (acts [N, d] and beliefs [N, S_f], paired by row)."""
    x = _as2d(acts, "acts")
    flat = _flat(beliefs)
    design = np.c_[x, np.ones(len(x))]
    out = []
    for b in flat:
        if len(b) != len(x):
            raise ValueError(f"{len(x)} activations but {len(b)} beliefs")
        coef, *_ = np.linalg.lstsq(design, b, rcond=None)
        residual = np.square(b - design @ coef).sum()
        total = np.square(b - b.mean(0)).sum()
        out.append(float(1.0 - residual / max(total, 1e-300)))
    return out


@dataclasses.dataclass(frozen=True)
class VaryOne:
    """Per-factor subspaces of the activations from vary-one batches."""

    dims: list[int]
    """Per factor, dims at `threshold` of its vary-one activations."""
    union_dims: int
    """Dims at `threshold` of all factors' vary-one activations together."""
    overlaps: Array
    """[F, F, k_max]: ‖V_i[:k] V_j[:k]ᵀ‖²_F / k for k = 1 .. k_max (0: orthogonal)."""
    baseline: Array
    """[k_max]: k / d, the overlap of random k-dimensional subspaces."""
    threshold: float


def vary_one(
    per_factor_acts: Sequence[ArrayLike], k_max: int = 10, threshold: float = 0.95
) -> VaryOne:
    """Subspaces of activations [N_f, d] gathered, for each factor f, from batches in which only
    factor f varies (every other factor's tokens frozen) with each position's batch mean
    already subtracted (which removes the frozen factors' contribution)."""
    acts = [_as2d(a, f"factor {i}") for i, a in enumerate(per_factor_acts)]
    d = acts[0].shape[1]
    if any(a.shape[1] != d for a in acts):
        raise ValueError("every factor's activations must have the same width")
    k_max = min(k_max, d)
    axes, dims = [], []
    for a in acts:
        v, ratios = weighted_pca(a)
        axes.append(v[:, :k_max])
        dims.append(dims_at_variance(ratios, threshold))
    _, union = weighted_pca(np.concatenate(acts))
    n = len(acts)
    overlaps = np.zeros((n, n, k_max))
    for i in range(n):
        for j in range(n):
            for k in range(1, k_max + 1):
                overlaps[i, j, k - 1] = np.square(axes[i][:, :k].T @ axes[j][:, :k]).sum() / k
    return VaryOne(
        dims=dims,
        union_dims=dims_at_variance(union, threshold),
        overlaps=overlaps,
        baseline=np.arange(1, k_max + 1) / d,
        threshold=threshold,
    )
