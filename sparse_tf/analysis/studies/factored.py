"""Factored belief geometry of a model trained on the 5-factor process (Shai et al. 2026):
three Mess3 and two tom_quantum factors emitting one of 432 composite tokens per step.

The final residual stream over fresh sequences (every position: position p has seen p + 1
tokens) is compared with the two hypotheses' dimensions, computed from the true beliefs of the
same sequences (factored: 10, joint: 242 exactly; 9 and ~138 at 95% variance); a linear
read-out of each factor's belief gives its R²; vary-one batches (every other factor's tokens
frozen) give each factor's subspace, their dimensions, union and pairwise overlaps against the
random k/d. The same numbers for the untrained model (same config and seed) are the
initialisation baseline. The model's loss is set beside the optimal predictor's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sparse_tf.analysis.factored import belief_geometry, belief_regression, vary_one
from sparse_tf.analysis.linalg import dims_at_variance, weighted_pca
from sparse_tf.analysis.studies.common import (
    Row,
    StudyError,
    StudyModel,
    final_site,
    fmt,
    format_table,
    logits,
    site_activations,
)
from sparse_tf.data.processes import FactoredProcess, factored_process
from sparse_tf.data.synthetic import FACTORED_LENGTH
from sparse_tf.filenames import RUN_FILE
from sparse_tf.io import read_json
from sparse_tf.model import GPT, target_loss

# Read off the published figures (arXiv 2602.02385, authors' reproducibility commit; the
# analyses reference, §C.5): approximate.
PAPER = {
    "dims": "≈ 10–11 after ~1k steps (init ≈ 62)",
    "baselines": "factored 10, joint 135–138",
    "vary_dims": "sum ≈ 28 at 1k steps, ≈ 14 at 500k; union ≈ 12",
    "overlap1": "≈ 1.5e-3 at 1k steps, 6e-4 at 500k (init ≈ 0.5); k/d = 0.008",
    "overlap2": "≈ 1e-3",
    "loss": "final ≈ 5.94–5.97 nats (uniform 6.07)",
}
THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


@dataclasses.dataclass(frozen=True)
class FactoredModel:
    label: str
    kind: str
    trained: bool
    loss: float
    """Next-token cross-entropy on the sequences (positions 1 .. L−1)."""
    optimal_loss: float
    """The Bayes-optimal predictor's on the same tokens."""
    dims: dict[str, int]
    """Dims of the final residual at each variance threshold."""
    regression_r2: list[float]
    """Per factor, R² of the affine read-out of its belief."""
    vary_dims: list[int]
    vary_union: int
    overlap_k1: float
    overlap_k2: float
    """Mean over factor pairs of the vary-one overlap with k = 1 and k = 2 axes."""
    overlap_k1_max: float
    baseline_k1: float
    """k/d at k = 1."""


@dataclasses.dataclass(frozen=True)
class FactoredStudy:
    models: list[FactoredModel]
    factored_dims: int
    factored_rank: int
    joint_dims: int
    joint_rank: int
    noise: float
    sequences: int

    def table(self) -> str:
        rows = [
            Row("process noise ε", fmt(self.noise, 3)),
            Row("beliefs: factored dims@95% (rank)", f"{self.factored_dims} ({self.factored_rank})",
                "9 (10)"),
            Row("beliefs: joint dims@95% (rank)", f"{self.joint_dims} ({self.joint_rank})",
                PAPER["baselines"] + " (242)"),
        ]  # fmt: skip
        for m in self.models:
            tag = m.label + ("" if m.trained else ", untrained")
            rows += [
                Row(tag, ""),
                Row("  loss (optimal)", f"{fmt(m.loss)} ({fmt(m.optimal_loss)})",
                    PAPER["loss"] if m.trained else "ln 432 = 6.07"),
                Row("  dims@80/90/95/99%", "/".join(str(v) for v in m.dims.values()),
                    PAPER["dims"] if m.trained else ""),
                Row("  belief R² per factor", ", ".join(fmt(r) for r in m.regression_r2)),
                Row("  vary-one dims per factor (sum)",
                    f"{', '.join(map(str, m.vary_dims))} ({sum(m.vary_dims)})",
                    PAPER["vary_dims"] if m.trained else "≈ 330 at init"),
                Row("  vary-one union dims", str(m.vary_union)),
                Row("  overlap k=1 mean, max (k/d)",
                    f"{m.overlap_k1:.2e}, {m.overlap_k1_max:.2e} ({m.baseline_k1:.3f})",
                    PAPER["overlap1"] if m.trained else ""),
                Row("  overlap k=2 mean", f"{m.overlap_k2:.2e}",
                    PAPER["overlap2"] if m.trained else ""),
            ]  # fmt: skip
        return format_table("== Factored representations, 5-factor process", rows)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def optimal_loss(process: FactoredProcess, tokens: np.ndarray, beliefs: list[np.ndarray]) -> float:
    """Mean −log p(x_t | x_<t) of the true process over positions 1 .. L−1 of tokens [N, L]
    (beliefs[f] [N, L, S_f] after each token)."""
    parts = process.decompose(tokens[:, 1:])  # [N, L−1, F]
    p = np.ones(parts.shape[:2])
    for f, (factor, b) in enumerate(zip(process.factors, beliefs, strict=True)):
        probs = factor.probabilities(b[:, :-1].reshape(-1, factor.states))
        probs = probs.reshape(len(b), -1, factor.vocab)  # [N, L−1, V_f]
        p *= np.take_along_axis(probs, parts[..., f : f + 1], -1)[..., 0]
    p = (1 - process.noise) * p + process.noise / process.vocab
    return float(-np.log(p).mean())


def _analyse(
    label: str,
    kind: str,
    trained: bool,
    model: GPT,
    ids: torch.Tensor,
    tokens: np.ndarray,
    beliefs: list[np.ndarray],
    optimal: float,
    vary: list[list[np.ndarray]],
) -> FactoredModel:
    site = final_site(model)
    inputs = ids[torch.from_numpy(tokens)]
    acts = site_activations(model, inputs, site)  # [N, L, d]
    h = acts.reshape(-1, acts.shape[-1]).double().numpy()
    out = logits(model, inputs)
    _, ratios = weighted_pca(h)
    per_factor = []
    for batches in vary:  # the factor's frozen draws, each [B, L] tokens
        stacked = []
        for batch in batches:
            a = site_activations(model, ids[torch.from_numpy(batch)], site).double().numpy()
            stacked.append((a - a.mean(0)).reshape(-1, a.shape[-1]))  # per-position centring
        per_factor.append(np.concatenate(stacked))
    vo = vary_one(per_factor, k_max=2)
    pairs = ~np.eye(len(vary), dtype=bool)
    return FactoredModel(
        label=label,
        kind=kind,
        trained=trained,
        loss=float(target_loss(out[:, :-1], inputs[:, 1:])),
        optimal_loss=optimal,
        dims={f"{t:g}": dims_at_variance(ratios, t) for t in THRESHOLDS},
        regression_r2=belief_regression(h, [b.reshape(-1, b.shape[-1]) for b in beliefs]),
        vary_dims=vo.dims,
        vary_union=vo.union_dims,
        overlap_k1=float(vo.overlaps[..., 0][pairs].mean()),
        overlap_k2=float(vo.overlaps[..., 1][pairs].mean()),
        overlap_k1_max=float(vo.overlaps[..., 0][pairs].max()),
        baseline_k1=float(vo.baseline[0]),
    )


def run_factored(
    models: list[StudyModel],
    noise: float = 0.0,
    sequences: int = 2000,
    frozen: int = 10,
    batch: int = 200,
    seed: int = 999,
    untrained: bool = True,
) -> FactoredStudy:
    """The factored analysis of every model (and, with `untrained`, of each one's
    initialisation: the same config and seed, no training)."""
    process = factored_process(noise)
    rng = np.random.default_rng(seed)
    tokens, beliefs = process.sample(sequences, FACTORED_LENGTH, rng)
    vary = [
        [process.vary_one(f, batch, FACTORED_LENGTH, rng)[0] for _ in range(frozen)]
        for f in range(len(process.factors))
    ]
    geometry = belief_geometry(beliefs)
    optimal = optimal_loss(process, tokens, beliefs)
    results = []
    for sm in models:
        ids = torch.tensor(sm.token_ids([f"t{i}" for i in range(process.vocab)]))
        todo = [(sm.label, True, sm.model)]
        if untrained:
            torch.manual_seed(_seed_of(sm))
            with torch.device(next(sm.model.parameters()).device):
                todo.append((sm.label, False, GPT(sm.model.cfg).eval()))
        for label, trained, model in todo:
            results.append(
                _analyse(label, sm.kind, trained, model, ids, tokens, beliefs, optimal, vary)
            )
    return FactoredStudy(
        models=results,
        factored_dims=geometry.factored_dims,
        factored_rank=geometry.factored_rank,
        joint_dims=geometry.joint_dims,
        joint_rank=geometry.joint_rank,
        noise=noise,
        sequences=sequences,
    )


def _seed_of(sm: StudyModel) -> int:
    """The training seed of a study model, from its run's run.json; 0 for a model folder
    outside a run (an export): its "untrained" baseline is then seed 0's initialisation."""
    run = sm.path.parent / RUN_FILE
    if not run.is_file():
        return 0
    try:
        return int(read_json(run)["config"]["seed"])
    except (KeyError, TypeError, ValueError) as e:
        raise StudyError(f"{run}: no config.seed ({e})") from None
