"""Linear algebra of representation analyses, on numpy arrays in float64.

Subspaces are orthonormal bases Q [d, r] (columns); activations are [n, d] (rows = samples).
Every comparison has its null beside it, because in high dimension "small overlap" or "large
rotation" are meaningless without the value that chance gives:

    orthonormalize(A)                    Q: an orthonormal basis of A's column span
    projector(Q)                         P = Q Qᵀ
    principal_angles(Qa, Qb)             degrees, ascending
    projector_overlap(Qa, Qb)            ‖Qaᵀ Qb‖²_F / √(ra·rb) ∈ [0, 1]
    random_overlap_baseline(ra, rb, d)   its expectation for random subspaces: √(ra·rb) / d
    cca(X, Y, k)                         the k largest canonical correlations
    procrustes(A, B)                     orthogonal R minimising ‖(A − Ā) R − (B − B̄)‖_F (det ±1)
    explained_variance(pred, target)     1 − Σ (pred − target)² / Σ (target − mean)²
    weighted_pca(X, w)                   principal axes and variance ratios of weighted samples
    dims_at_variance(ratios, threshold)  components needed to reach a variance fraction
    haar_orthogonal(d, rng)              a Haar-random orthogonal matrix (the rotation null)
    nearest_signed_permutation(R)        the signed permutation closest to R, and the distance
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment

Array = NDArray[np.float64]


def _as2d(a: ArrayLike, name: str) -> Array:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {x.shape}")
    return x


def orthonormalize(a: ArrayLike, tol: float = 1e-10) -> Array:
    """Orthonormal basis [d, r] of the column span of `a` [d, k] (r = numerical rank: columns
    whose singular value is below tol · the largest are dropped)."""
    x = _as2d(a, "orthonormalize")
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return np.zeros((x.shape[0], 0))
    return u[:, s > tol * s[0]]


def projector(q: ArrayLike) -> Array:
    """P = Q Qᵀ [d, d] of an orthonormal basis Q [d, r]."""
    q = _as2d(q, "projector")
    return q @ q.T


def principal_angles(qa: ArrayLike, qb: ArrayLike) -> Array:
    """Principal angles in degrees (ascending: the best-aligned first) between the spans of the
    orthonormal bases Qa [d, ra] and Qb [d, rb]; min(ra, rb) angles."""
    qa, qb = _as2d(qa, "qa"), _as2d(qb, "qb")
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"bases of different spaces: {qa.shape[0]} vs {qb.shape[0]} rows")
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def projector_overlap(qa: ArrayLike, qb: ArrayLike) -> float:
    """‖Qaᵀ Qb‖²_F / √(ra·rb): 1 for the same subspace, 0 for orthogonal ones."""
    qa, qb = _as2d(qa, "qa"), _as2d(qb, "qb")
    return float(np.square(qa.T @ qb).sum() / np.sqrt(qa.shape[1] * qb.shape[1]))


def random_overlap_baseline(ra: int, rb: int, d: int) -> float:
    """Expected `projector_overlap` of independent uniformly random subspaces of dimensions ra
    and rb in R^d: E‖Qaᵀ Qb‖²_F = ra·rb/d, divided by √(ra·rb)."""
    return float(np.sqrt(ra * rb) / d)


def cca(x: ArrayLike, y: ArrayLike, k: int | None = None, ridge: float = 1e-8) -> Array:
    """Canonical correlations (descending, the k largest) between the columns of X [n, p] and
    Y [n, q], paired by row. Each side is centred and whitened with the Cholesky factor of its
    covariance (+ ridge · its mean variance on the diagonal)."""
    x, y = _as2d(x, "x"), _as2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"cca: {x.shape[0]} vs {y.shape[0]} paired samples")
    x, y = x - x.mean(0), y - y.mean(0)
    n = x.shape[0] - 1

    def whitener(a: Array) -> Array:
        cov = a.T @ a / n
        cov += ridge * max(np.trace(cov) / len(cov), 1e-300) * np.eye(len(cov))
        return np.linalg.inv(np.linalg.cholesky(cov))

    wx, wy = whitener(x), whitener(y)
    rho = np.linalg.svd(wx @ (x.T @ y / n) @ wy.T, compute_uv=False)
    return np.clip(rho[: k or len(rho)], 0.0, 1.0)


def procrustes(a: ArrayLike, b: ArrayLike) -> Array:
    """The orthogonal R [d, d] minimising ‖(A − Ā) R − (B − B̄)‖_F for paired rows of A, B
    [n, d]: R = U Vᵀ from the SVD of (A − Ā)ᵀ (B − B̄). R is in O(d): det R may be −1."""
    a, b = _as2d(a, "a"), _as2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"procrustes: shapes {a.shape} and {b.shape} differ")
    u, _, vt = np.linalg.svd((a - a.mean(0)).T @ (b - b.mean(0)))
    return u @ vt


def explained_variance(pred: ArrayLike, target: ArrayLike) -> float:
    """1 − Σ (pred − target)² / Σ (target − target's mean over rows)²: the share of the
    target's variance (each dimension around its own mean) that `pred` accounts for."""
    pred, target = _as2d(pred, "pred"), _as2d(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"explained_variance: shapes {pred.shape} and {target.shape} differ")
    total = np.square(target - target.mean(0)).sum()
    return float(1.0 - np.square(pred - target).sum() / total)


def weighted_pca(x: ArrayLike, weights: ArrayLike | None = None) -> tuple[Array, Array]:
    """Principal axes [d, d] (columns, by decreasing variance) and the variance ratio of each
    for samples X [n, d] with non-negative weights [n] (uniform when None); the mean is the
    weighted mean."""
    x = _as2d(x, "x")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(x),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weighted_pca: weights must be [n], non-negative, not all zero")
    w = w / w.sum()
    centred = x - w @ x
    cov = (centred * w[:, None]).T @ centred
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    return vectors[:, order], values / values.sum() if values.sum() > 0 else values


def dims_at_variance(ratios: ArrayLike, threshold: float = 0.95) -> int:
    """The fewest leading components whose variance ratios (descending) sum to ≥ threshold."""
    r = np.asarray(ratios, dtype=np.float64)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    cumulative = np.cumsum(r) / r.sum()
    return int(np.searchsorted(cumulative, threshold - 1e-12) + 1)


def haar_orthogonal(d: int, rng: np.random.Generator) -> Array:
    """A Haar-distributed matrix of O(d): QR of a Gaussian matrix with the signs of R's
    diagonal moved into Q (without that fix the distribution is not Haar)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def nearest_signed_permutation(r: ArrayLike) -> tuple[Array, float]:
    """The signed permutation matrix P maximising Σ |R_ij| over its support (Hungarian
    algorithm on |R|; signs from R), and ‖R − P‖_F. A rotation that merely relabels and flips
    coordinates has distance 0; a Haar-random one about √(2d − 2)."""
    r = _as2d(r, "r")
    rows, cols = linear_sum_assignment(-np.abs(r))
    p = np.zeros_like(r)
    p[rows, cols] = np.sign(r[rows, cols])
    p[rows, cols] = np.where(p[rows, cols] == 0, 1.0, p[rows, cols])
    return p, float(np.linalg.norm(r - p))
