"""Algorithmic core extraction (ACE, Schiffman 2026): the low-dimensional subspace of a site's
activations that is both active (the data varies along it) and relevant (the output is
sensitive to it), by balanced truncation.

With C the covariance of the activations H [n, d] (the reachability Gramian) and O the Gram of
the readout's Jacobian (the observability Gramian: WᵀW for a linear head W [k, d]), factor
C = L_c L_cᵀ and O = L_o L_oᵀ, take the SVD L_cᵀ L_o = U Σ Vᵀ; the mode weights are σ² (the
eigenvalues of C·O) and the core of rank r is orth(L_c U[:, :r]). The rank is the fewest modes
holding `threshold` of the total weight, unless given. A direction with variance but no
readout, or readout but no variance, has weight 0: both are needed.

    core = extract_core(acts, readout=head_weight, threshold=0.999)
    core.basis            # [d, r] orthonormal
    fit_linear_dynamics(acts_t @ core.basis, acts_next @ core.basis).eigenvalues
    compare_cores(core_a, acts_a, core_b, acts_b)   # angles, overlap vs its random baseline, CCA
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from sparse_tf.analysis.linalg import (
    Array,
    _as2d,
    cca,
    orthonormalize,
    principal_angles,
    projector_overlap,
    random_overlap_baseline,
)


@dataclasses.dataclass(frozen=True)
class Core:
    """A site's algorithmic core."""

    basis: Array
    """[d, r] orthonormal columns, the most important mode first."""
    mean: Array
    """[d] the activations' mean (the fill of mean-fill interventions)."""
    weights: Array
    """[min(d, ·)] every mode's weight σ², descending."""
    threshold: float | None
    """The energy threshold that chose the rank (None: the rank was given)."""

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @property
    def energy(self) -> float:
        """Share of the total mode weight inside the core."""
        return float(self.weights[: self.rank].sum() / self.weights.sum())


def _sqrt_factor(a: Array, jitter: float = 1e-8) -> Array:
    """L with L Lᵀ = a for a symmetric PSD matrix (eigendecomposition; negative rounding
    clipped, a jitter of jitter · tr(a)/d keeps it full rank)."""
    values, vectors = np.linalg.eigh((a + a.T) / 2)
    floor = jitter * max(np.trace(a) / len(a), 1e-300)
    return vectors * np.sqrt(np.clip(values, 0.0, None) + floor)


def extract_core(
    acts: ArrayLike,
    readout: ArrayLike | None = None,
    observability: ArrayLike | None = None,
    threshold: float = 0.99,
    rank: int | None = None,
) -> Core:
    """The core of activations `acts` [n, d] for a linear `readout` [k, d] (O = WᵀW) or a
    given `observability` Gramian [d, d] (e.g. the mean of JᵀJ over samples for a nonlinear
    tail). The rank is `rank`, or the fewest modes with `threshold` of the weight."""
    h = _as2d(acts, "acts")
    if (readout is None) == (observability is None):
        raise ValueError("give exactly one of readout [k, d] and observability [d, d]")
    d = h.shape[1]
    if readout is not None:
        w = _as2d(readout, "readout")
        if w.shape[1] != d:
            raise ValueError(f"readout reads {w.shape[1]} features, activations have {d}")
        o = w.T @ w
    else:
        o = _as2d(observability, "observability")
        if o.shape != (d, d):
            raise ValueError(f"observability must be [{d}, {d}], got {o.shape}")
    mean = h.mean(0)
    c = np.cov(h, rowvar=False).reshape(d, d)
    l_c, l_o = _sqrt_factor(c), _sqrt_factor(o)
    u, s, _ = np.linalg.svd(l_c.T @ l_o)
    weights = s**2
    if rank is None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold} must be in (0, 1]")
        cumulative = np.cumsum(weights) / weights.sum()
        rank = int(np.searchsorted(cumulative, threshold - 1e-12) + 1)
        chosen: float | None = threshold
    else:
        if not 1 <= rank <= d:
            raise ValueError(f"rank={rank} must be in [1, {d}]")
        chosen = None
    basis = orthonormalize(l_c @ u[:, :rank])
    return Core(basis=basis, mean=mean, weights=weights, threshold=chosen)


def jacobian_observability(tail: Callable[[Tensor], Tensor], acts: Tensor) -> Array:
    """O = mean over samples of JᵀJ, J = ∂tail(h)/∂h [k, d] at each row h of acts [S, d]:
    the observability Gramian of a nonlinear readout (e.g. a final norm then the unembedding).
    `tail` maps one activation [d] to the outputs of interest [k]."""
    if acts.dim() != 2:
        raise ValueError(f"acts: expected [S, d], got shape {tuple(acts.shape)}")
    jac = torch.func.vmap(torch.func.jacrev(tail))(acts.detach()).detach().double()  # [S, k, d]
    return (torch.einsum("ski,skj->ij", jac, jac) / len(acts)).cpu().numpy()


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """z_{t+1} ≈ A z_t fitted in core coordinates."""

    operator: Array
    """[r, r] A, acting on row vectors: z_{t+1} = z_t A."""
    eigenvalues: Array
    """eig(A), by decreasing modulus."""
    r2: float
    """Mean over coordinates of the fit's R²."""


def fit_linear_dynamics(z_now: ArrayLike, z_next: ArrayLike) -> Dynamics:
    """Least squares z_next − mean ≈ (z_now − mean) A for paired rows [n, r] (each side
    centred): the operator, its eigenvalues and the R² of the fit."""
    x, y = _as2d(z_now, "z_now"), _as2d(z_next, "z_next")
    if x.shape != y.shape:
        raise ValueError(f"z_now {x.shape} and z_next {y.shape} must pair up")
    x, y = x - x.mean(0), y - y.mean(0)
    a, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = ((y - x @ a) ** 2).sum(0)
    r2 = 1.0 - residual / np.maximum((y**2).sum(0), 1e-300)
    eig = np.linalg.eigvals(a)
    return Dynamics(operator=a, eigenvalues=eig[np.argsort(-np.abs(eig))], r2=float(r2.mean()))


@dataclasses.dataclass(frozen=True)
class CoreComparison:
    """Two cores of independently trained models, on the same inputs."""

    angles: Array
    """Principal angles in degrees, ascending."""
    overlap: float
    """Projector overlap ‖Qaᵀ Qb‖²_F / √(ra·rb)."""
    overlap_baseline: float
    """What random subspaces of the same ranks give: √(ra·rb)/d."""
    canonical_correlations: Array
    """CCA of the core coordinates (H Q) of both models, descending."""


def compare_cores(
    core_a: Core, acts_a: ArrayLike, core_b: Core, acts_b: ArrayLike
) -> CoreComparison:
    """Compare two cores whose activations [n, d] come from the same n inputs. The subspaces
    can only be compared directly when both models share a basis (rarely: independently
    trained models differ by a rotation); the CCA of the core coordinates compares what the
    cores encode, whatever their basis."""
    ha, hb = _as2d(acts_a, "acts_a"), _as2d(acts_b, "acts_b")
    if ha.shape[0] != hb.shape[0]:
        raise ValueError(f"{ha.shape[0]} vs {hb.shape[0]} inputs: cores compare on the same inputs")
    same_space = core_a.basis.shape[0] == core_b.basis.shape[0]
    d = core_a.basis.shape[0]
    return CoreComparison(
        angles=principal_angles(core_a.basis, core_b.basis) if same_space else np.array([]),
        overlap=projector_overlap(core_a.basis, core_b.basis) if same_space else float("nan"),
        overlap_baseline=random_overlap_baseline(core_a.rank, core_b.rank, d),
        canonical_correlations=cca(ha @ core_a.basis, hb @ core_b.basis),
    )
