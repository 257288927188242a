"""Analyses of learned structure: `linalg` (subspaces, CCA, Procrustes, PCA, the null
baselines), `interventions` (keep/remove/flip/scale a subspace, as a hook) and `ace`
(algorithmic cores by balanced truncation, their dynamics and cross-model comparison) and
`rotation` (Procrustes between two models with held-out EV, the shuffled-pairing null, Haar
statistics and the distance to a signed permutation) and `factored` (factored vs joint belief
baselines, belief regression, vary-one subspaces). Synthetic processes with exact beliefs are
in `sparse_tf.data.processes`.

Every analysis needs scipy (the [analysis] extra): without it, importing this package is one
line saying so, not a traceback from the module that happens to import scipy first."""

# ruff: noqa: E402 - the analyses are imported after the check

from sparse_tf.extras import require

require("scipy", "analysis", "sparse_tf.analysis (sparse-tf analyze)")

from sparse_tf.analysis.ace import (
    Core,
    CoreComparison,
    Dynamics,
    compare_cores,
    extract_core,
    fit_linear_dynamics,
)
from sparse_tf.analysis.factored import (
    BeliefGeometry,
    VaryOne,
    belief_geometry,
    belief_regression,
    vary_one,
)
from sparse_tf.analysis.interventions import SubspaceEdit, apply_edit, subspace_hook
from sparse_tf.analysis.linalg import (
    cca,
    dims_at_variance,
    explained_variance,
    haar_orthogonal,
    nearest_signed_permutation,
    orthonormalize,
    principal_angles,
    procrustes,
    projector,
    projector_overlap,
    random_overlap_baseline,
    weighted_pca,
)
from sparse_tf.analysis.rotation import RotationReport, compare_by_rotation, eigen_angles

__all__ = [
    "BeliefGeometry",
    "Core",
    "CoreComparison",
    "Dynamics",
    "RotationReport",
    "SubspaceEdit",
    "VaryOne",
    "apply_edit",
    "belief_geometry",
    "belief_regression",
    "cca",
    "compare_by_rotation",
    "compare_cores",
    "dims_at_variance",
    "eigen_angles",
    "explained_variance",
    "extract_core",
    "fit_linear_dynamics",
    "haar_orthogonal",
    "nearest_signed_permutation",
    "orthonormalize",
    "principal_angles",
    "procrustes",
    "projector",
    "projector_overlap",
    "random_overlap_baseline",
    "subspace_hook",
    "vary_one",
    "weighted_pca",
]
