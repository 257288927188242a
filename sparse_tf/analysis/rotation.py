"""Are two models' residual streams one representation in two bases? (McCann 2026)

Fit the orthogonal R that best maps model A's activations onto model B's for the same inputs
(Procrustes, on a fit batch), then judge it on a held-out batch and against nulls:

- held-out explained variance of B by A·R, beside the raw (unrotated) one and the ceiling of
  any linear map (least squares A·M + c on the fit batch): how much of what is linearly
  shared is a rotation;
- the shuffled-pairing null: R fitted to A's rows paired with B's rows of *other* inputs —
  it must explain nothing on held-out pairs, or the EV says nothing;
- ‖R − I‖_F against √(2d) (the Haar value) and a two-sample KS test of R's eigen-angles
  against a pool of Haar draws — weak evidence on their own: unrelated data gives the same
  values, which is why the shuffled null and held-out EV are reported beside them;
- the distance to the nearest signed permutation against its Haar value: a weight-sparse
  model with a privileged basis should be close to one.

    report = compare_by_rotation(acts_a_fit, acts_b_fit, acts_a_test, acts_b_test, rng)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp

from sparse_tf.analysis.linalg import (
    Array,
    _as2d,
    explained_variance,
    haar_orthogonal,
    nearest_signed_permutation,
    procrustes,
)


def eigen_angles(r: ArrayLike) -> Array:
    """|arg λ| ∈ [0, π] of every eigenvalue of the orthogonal matrix R."""
    return np.abs(np.angle(np.linalg.eigvals(_as2d(r, "r"))))


@dataclasses.dataclass(frozen=True)
class RotationReport:
    """One model pair at one site (see the module docstring)."""

    d: int
    rotation: Array
    """[d, d] R fitted on the fit batch (A·R ≈ B after centring)."""
    ev_raw: float
    """Held-out EV of B by A itself (no rotation)."""
    ev_rotated: float
    """Held-out EV of B by A·R."""
    ev_linear: float
    """Held-out EV of B by the best affine map of A (least squares on the fit batch): the
    ceiling of any linear alignment."""
    ev_shuffled: float
    """Held-out EV of B by A·R_shuffled, R fitted on mispaired rows (the null: ≈ 0 or below)."""
    distance_to_identity: float
    """‖R − I‖_F; the Haar value is about √(2d)."""
    haar_distance_to_identity: float
    """√(2d)."""
    ks_statistic: float
    ks_pvalue: float
    """Two-sample KS test of R's eigen-angles against `haar_draws` Haar matrices."""
    distance_to_signed_permutation: float
    """‖R − P‖_F to the nearest signed permutation P."""
    haar_distance_to_signed_permutation: float
    """The same for Haar draws (mean), the scale to compare it with."""


def compare_by_rotation(
    a_fit: ArrayLike,
    b_fit: ArrayLike,
    a_test: ArrayLike,
    b_test: ArrayLike,
    rng: np.random.Generator,
    haar_draws: int = 10,
) -> RotationReport:
    """Fit R on (a_fit, b_fit) [n, d] (rows paired by input), evaluate on (a_test, b_test)."""
    af, bf, at, bt = (_as2d(x, n) for x, n in zip((a_fit, b_fit, a_test, b_test),
                                                   ("a_fit", "b_fit", "a_test", "b_test"),
                                                   strict=True))  # fmt: skip
    if af.shape != bf.shape or at.shape != bt.shape or af.shape[1] != at.shape[1]:
        raise ValueError(
            f"paired activations of one width expected: fit {af.shape} / {bf.shape}, "
            f"test {at.shape} / {bt.shape}"
        )
    d = af.shape[1]
    r = procrustes(af, bf)

    def held_out(rotation: Array | None) -> float:
        # Centred with the fit batch's means: the held-out batch tunes nothing.
        x = at - af.mean(0)
        return explained_variance((x if rotation is None else x @ rotation) + bf.mean(0), bt)

    linear, *_ = np.linalg.lstsq(af - af.mean(0), bf - bf.mean(0), rcond=None)
    shuffled = procrustes(af, bf[rng.permutation(len(bf))])
    haar = [haar_orthogonal(d, rng) for _ in range(haar_draws)]
    ks = ks_2samp(eigen_angles(r), np.concatenate([eigen_angles(h) for h in haar]))
    _, to_perm = nearest_signed_permutation(r)
    haar_to_perm = float(np.mean([nearest_signed_permutation(h)[1] for h in haar]))
    return RotationReport(
        d=d,
        rotation=r,
        ev_raw=held_out(None),
        ev_rotated=held_out(r),
        ev_linear=held_out(linear),
        ev_shuffled=held_out(shuffled),
        distance_to_identity=float(np.linalg.norm(r - np.eye(d))),
        haar_distance_to_identity=float(np.sqrt(2 * d)),
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        distance_to_signed_permutation=to_perm,
        haar_distance_to_signed_permutation=haar_to_perm,
    )
