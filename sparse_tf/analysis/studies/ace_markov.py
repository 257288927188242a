"""ACE on 1-layer models of the 4-state circulant Markov chain (Schiffman 2026, the Markov
experiment): the core at the final residual stream, its sufficiency and necessity, its
dynamics against the chain's spectrum, and the cores of two seeds compared.

The chain stays with 0.75 and steps to the next state with 0.25, so the Bayes predictor
("stay") scores 0.75, chance 0.25, and the transition matrix has eigenvalues 1, 0.75 ± 0.25i
and 0.5. A model's residual stream must carry the current state's predictive distribution,
a 3-dimensional affine set (the simplex minus its Perron direction): the expected core rank.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sparse_tf.analysis.ace import (
    Core,
    compare_cores,
    extract_core,
    fit_linear_dynamics,
    jacobian_observability,
)
from sparse_tf.analysis.interventions import SubspaceEdit, subspace_hook
from sparse_tf.analysis.studies.common import (
    Row,
    StudyModel,
    final_site,
    fmt_range,
    format_table,
    logits,
    site_activations,
)
from sparse_tf.data.processes import markov_chain
from sparse_tf.data.synthetic import MARKOV_LENGTH, markov_sequences

STATES = [f"s{i}" for i in range(4)]
TRUE_EIGENVALUES = np.array([0.75 + 0.25j, 0.75 - 0.25j, 0.5])
# The paper's numbers (arXiv 2602.22600, Markov experiment; the analyses reference, §A.7).
PAPER = {
    "rank": "3 (τ = 0.999)",
    "accuracy": "≈ 0.750 (Bayes)",
    "keep": "= base ≈ 0.750",
    "remove": "≈ 0.25 (chance)",
    "eigenvalues": "0.75 ± 0.25i, 0.5 (< 1% error)",
    "r2": "R²/R²_oracle > 0.98 (R²_oracle 0.5)",
    "overlap": "0.02–0.04 (random 0.047)",
    "cca": "0.93–0.99",
}


@dataclasses.dataclass(frozen=True)
class AceModel:
    """ACE on one model."""

    label: str
    kind: str
    accuracy: float
    """Next-state accuracy of the unedited model."""
    bayes_accuracy: float
    """Of the Bayes predictor ('stay') on the same sequences."""
    rank: int
    energy: float
    mode_weights: list[float]
    """The first mode weights σ², normalised to sum 1."""
    keep: float
    remove: float
    """Accuracy with only the core (zero fill), and with the core removed."""
    keep_mean: float
    remove_mean: float
    """The same with mean fill."""
    eigenvalues: list[complex]
    eigenvalue_error: float
    """Largest |λ − λ_true| after matching (Hungarian) the fitted eigenvalues to 0.75 ± 0.25i
    and 0.5; inf when the core has fewer than 3 dimensions."""
    r2: float
    r2_oracle: float


@dataclasses.dataclass(frozen=True)
class AcePair:
    a: str
    b: str
    angles: list[float]
    overlap: float
    overlap_baseline: float
    cca: list[float]


@dataclasses.dataclass(frozen=True)
class AceReport:
    models: list[AceModel]
    pairs: list[AcePair]
    threshold: float
    sequences: int

    def table(self) -> str:
        blocks = []
        for kind in dict.fromkeys(m.kind for m in self.models):
            ms = [m for m in self.models if m.kind == kind]
            ps = [p for p in self.pairs if p.a in {m.label for m in ms}]
            rows = [
                Row("models", ", ".join(m.label for m in ms)),
                Row("core rank", ", ".join(str(m.rank) for m in ms), PAPER["rank"]),
                Row("accuracy (Bayes)", fmt_range([m.accuracy for m in ms])
                    + f" ({fmt_range([m.bayes_accuracy for m in ms])})", PAPER["accuracy"]),
                Row("keep core (zero fill)", fmt_range([m.keep for m in ms]), PAPER["keep"]),
                Row("remove core (zero fill)", fmt_range([m.remove for m in ms]), PAPER["remove"]),
                Row("keep / remove (mean fill)",
                    f"{fmt_range([m.keep_mean for m in ms])} / "
                    f"{fmt_range([m.remove_mean for m in ms])}"),
                *(
                    Row(f"eigenvalues, {m.label}", ", ".join(_complex(z) for z in m.eigenvalues),
                        PAPER["eigenvalues"])
                    for m in ms
                ),
                Row("max |λ − λ_true|", fmt_range([m.eigenvalue_error for m in ms])),
                Row("R² / R²_oracle", fmt_range([m.r2 / m.r2_oracle for m in ms]), PAPER["r2"]),
            ]  # fmt: skip
            if ps:
                rows += [
                    Row("projector overlap (random)", f"{fmt_range([p.overlap for p in ps])} "
                        f"({fmt_range([p.overlap_baseline for p in ps])})", PAPER["overlap"]),
                    Row("principal angles (deg)",
                        "; ".join(", ".join(f"{a:.0f}" for a in p.angles) for p in ps)),
                    Row("CCA of core coordinates",
                        "; ".join(", ".join(f"{c:.3f}" for c in p.cca) for p in ps), PAPER["cca"]),
                ]  # fmt: skip
            blocks.append(format_table(f"== ACE, Markov chain: {kind} models", rows))
        return "\n\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _complex(z: complex) -> str:
    return f"{z.real:.3f}" if abs(z.imag) < 5e-4 else f"{z.real:.3f}{z.imag:+.3f}i"


def _r2_oracle() -> float:
    """The best R² of a linear map from one predictive distribution to the next one's
    expectation: 1 − (1/V) Σ_j m_j / v_j with m_j = Σ_i π_i T_ij (1 − T_ij), v_j = π_j(1 − π_j)."""
    chain = markov_chain()
    t = chain.transitions.sum(0)  # [S, S] state transitions
    pi = chain.stationary
    m = pi @ (t * (1 - t))
    return float(1 - np.mean(m / (pi * (1 - pi))))


def analyse_model(
    sm: StudyModel,
    states: np.ndarray,
    threshold: float,
    jacobian_samples: int,
    rng: np.random.Generator,
) -> tuple[AceModel, np.ndarray, Core]:
    """ACE on one model over chain sequences `states` [N, L] (state numbers). Returns the
    result, the site activations [N·(L−1), d] the core was taken from, and the core."""
    model = sm.model
    site = final_site(model)
    ids = sm.token_ids(STATES)
    tokens = torch.tensor(ids)[torch.from_numpy(states)]  # [N, L] model ids
    # The last position of a training window predicts the end-of-text token; the chain's
    # predictions are positions 0 .. L−2.
    inputs, targets = tokens, tokens[:, 1:]
    acts = site_activations(model, inputs, site)[:, :-1]  # [N, L−1, d]
    h = acts.reshape(-1, acts.shape[-1]).double().numpy()
    device = next(model.parameters()).device
    readout = torch.tensor(ids, device=device)

    def tail(x: torch.Tensor) -> torch.Tensor:  # [d] -> [4]: the four states' logits
        return model.unembed(model.ln_final(x))[readout]

    sample = torch.as_tensor(h[rng.choice(len(h), min(jacobian_samples, len(h)), replace=False)])
    with torch.enable_grad():
        obs = jacobian_observability(tail, sample.float().to(device))
    core = extract_core(h, observability=obs, threshold=threshold)

    def accuracy(edit: SubspaceEdit | None) -> float:
        hooks = [] if edit is None else [(site, subspace_hook(edit))]
        out = logits(model, inputs, hooks=hooks)[:, :-1][..., ids]  # [N, L−1, 4]
        predicted = torch.tensor(ids)[out.argmax(-1)]
        return float((predicted == targets).float().mean())

    basis = core.basis
    z = acts.double().numpy() @ basis  # [N, L−1, r] core coordinates
    dyn = fit_linear_dynamics(z[:, :-1].reshape(-1, core.rank), z[:, 1:].reshape(-1, core.rank))
    result = AceModel(
        label=sm.label,
        kind=sm.kind,
        accuracy=accuracy(None),
        bayes_accuracy=float((inputs[:, :-1] == targets).float().mean()),
        rank=core.rank,
        energy=core.energy,
        mode_weights=(core.weights[:6] / core.weights.sum()).tolist(),
        keep=accuracy(SubspaceEdit(basis, "keep")),
        remove=accuracy(SubspaceEdit(basis, "remove")),
        keep_mean=accuracy(SubspaceEdit(basis, "keep", mean=core.mean)),
        remove_mean=accuracy(SubspaceEdit(basis, "remove", mean=core.mean)),
        eigenvalues=dyn.eigenvalues.tolist(),
        eigenvalue_error=eigenvalue_error(dyn.eigenvalues, TRUE_EIGENVALUES),
        r2=dyn.r2,
        r2_oracle=_r2_oracle(),
    )
    return result, h, core


def eigenvalue_error(fitted: np.ndarray, truth: np.ndarray) -> float:
    """Largest |λ − λ_true| over the best one-to-one matching of `truth` into `fitted`
    (inf when there are fewer fitted eigenvalues than true ones)."""
    if len(fitted) < len(truth):
        return float("inf")
    cost = np.abs(truth[:, None] - fitted[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def run_ace(
    models: list[StudyModel],
    sequences: int = 3000,
    threshold: float = 0.999,
    jacobian_samples: int = 128,
    seed: int = 999,
) -> AceReport:
    """ACE on every model, over `sequences` fresh chain sequences (the paper's test seed 999),
    and every pair of models of one kind compared on them."""
    rng = np.random.default_rng(seed)
    states = markov_sequences(sequences, MARKOV_LENGTH, rng)
    results, acts, cores = [], {}, {}
    for sm in models:
        result, h, core = analyse_model(sm, states, threshold, jacobian_samples, rng)
        results.append(result)
        acts[sm.label], cores[sm.label] = h, core
    pairs = []
    for a, b in itertools.combinations(models, 2):
        if a.kind != b.kind:
            continue
        cmp = compare_cores(cores[a.label], acts[a.label], cores[b.label], acts[b.label])
        pairs.append(
            AcePair(
                a=a.label,
                b=b.label,
                angles=cmp.angles.tolist(),
                overlap=cmp.overlap,
                overlap_baseline=cmp.overlap_baseline,
                cca=cmp.canonical_correlations[:3].tolist(),
            )
        )
    return AceReport(results, pairs, threshold, sequences)
