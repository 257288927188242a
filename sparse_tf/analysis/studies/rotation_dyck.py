"""Rotation between independently trained Dyck-3 models (McCann 2026), for pairs of dense
models and, new, pairs of weight-sparse ones.

For each pair (the first model of a kind is the anchor B, each other one is A) and each
residual site: the orthogonal R with A·R ≈ B fitted on one batch of windows, judged on
held-out windows (`analysis.rotation.compare_by_rotation`: EV raw / rotated / best linear
map, the shuffled-pairing null, ‖R − I‖_F against √(2d), the KS test of R's eigen-angles
against Haar draws, the distance to the nearest signed permutation against its Haar value),
and SAE transfer: an SAE trained on B's activations, scored on B's held-out ones (self), on
A's (raw) and on A's rotated into B's frame (rotated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from sparse_tf.analysis.rotation import RotationReport, compare_by_rotation
from sparse_tf.analysis.sae import SAEConfig, sae_explained_variance, train_sae
from sparse_tf.analysis.studies.common import (
    Row,
    StudyError,
    StudyModel,
    fmt,
    fmt_range,
    format_table,
    logits,
    residual_sites,
    site_activations,
)
from sparse_tf.data.synthetic import DYCK_SYMBOLS, dyck_sequences
from sparse_tf.data.tokenizer import EOT
from sparse_tf.model import GPT, target_loss

# The paper's toy numbers (arXiv 2605.24577, Dyck-3, cohort B: 5 independent seeds; the
# analyses reference, §B.4). Its models are supervised on three per-position labels; ours
# are language models of the same strings.
PAPER = {
    "ev_raw": "SAE EV raw < 0 at every internal site (down to −6.56)",
    "ev_rot": "SAE EV rotated 0.965–0.987, gap to self ≤ 0.025",
    "dist_identity": "10.80–11.25 vs √(2d) = 11.31",
    "ks": "p ≈ 1 (Pythia: KS 0.0027, p = 1.000)",
    "perm": "not reported; ≪ 1 would mean a privileged basis",
}


@dataclasses.dataclass(frozen=True)
class RotationSite:
    """One model pair at one site."""

    kind: str
    anchor: str
    """B, the model the others are rotated onto."""
    other: str
    """A."""
    site: str
    rotation: RotationReport
    sae_self: float
    sae_raw: float
    sae_rotated: float
    """EV of B's SAE on B's held-out activations, on A's, and on A's rotated into B's frame."""

    def to_dict(self) -> dict[str, Any]:
        """A flat record: the pair, the rotation's statistics (not R itself), the SAE's EVs."""
        stats = {f.name: getattr(self.rotation, f.name) for f in dataclasses.fields(RotationReport)}
        del stats["rotation"]
        return {
            "kind": self.kind,
            "anchor": self.anchor,
            "other": self.other,
            "site": self.site,
            **stats,
            "sae_self": self.sae_self,
            "sae_raw": self.sae_raw,
            "sae_rotated": self.sae_rotated,
        }


@dataclasses.dataclass(frozen=True)
class RotationStudy:
    sites: list[RotationSite]
    losses: dict[str, float]
    """Each model's next-token loss on the held-out windows."""
    fit_windows: int
    test_windows: int
    sae: dict[str, Any]

    def table(self) -> str:
        blocks = []
        for kind in dict.fromkeys(s.kind for s in self.sites):
            rs = [s for s in self.sites if s.kind == kind]
            names = dict.fromkeys([r.anchor for r in rs] + [r.other for r in rs])
            lines = [
                f"== Rotation, Dyck-3: {kind} models (A → B, R fitted on {self.fit_windows} "
                f"windows, scored on {self.test_windows} held-out ones)",
                "held-out loss: " + ", ".join(f"{m} {fmt(self.losses[m])}" for m in names),
                f"{'site':<26} {'A':<14} {'EV raw':>7} {'rotated':>7} {'linear':>7} "
                f"{'shuffle':>7} {'‖R−I‖':>6} {'KS p':>6} {'‖R−P‖':>6} {'(Haar)':>6} "
                f"{'SAE self':>8} {'raw':>7} {'rotated':>7}",
            ]
            for r in rs:
                q = r.rotation
                lines.append(
                    f"{r.site:<26} {r.other:<14} {q.ev_raw:>7.3f} {q.ev_rotated:>7.3f} "
                    f"{q.ev_linear:>7.3f} {q.ev_shuffled:>7.3f} {q.distance_to_identity:>6.2f} "
                    f"{q.ks_pvalue:>6.3f} {q.distance_to_signed_permutation:>6.2f} "
                    f"{q.haar_distance_to_signed_permutation:>6.2f} {r.sae_self:>8.3f} "
                    f"{r.sae_raw:>7.2f} {r.sae_rotated:>7.3f}"
                )
            qs = [r.rotation for r in rs]
            perm = [q.distance_to_signed_permutation / q.haar_distance_to_signed_permutation
                    for q in qs]  # fmt: skip
            rows = [
                Row("EV raw (held out)", fmt_range([q.ev_raw for q in qs])),
                Row("EV rotated / best linear map", f"{fmt_range([q.ev_rotated for q in qs])} / "
                    f"{fmt_range([q.ev_linear for q in qs])}"),
                Row("EV of the shuffled-pairing null", fmt_range([q.ev_shuffled for q in qs]),
                    "≤ 0"),
                Row(f"‖R − I‖_F (√(2d) = {np.sqrt(2 * qs[0].d):.2f})",
                    fmt_range([q.distance_to_identity for q in qs], 2), PAPER["dist_identity"]),
                Row("KS p, eigen-angles vs Haar", fmt_range([q.ks_pvalue for q in qs]),
                    PAPER["ks"]),
                Row("‖R − P‖ / its Haar value", fmt_range(perm), PAPER["perm"]),
                Row("SAE EV self", fmt_range([r.sae_self for r in rs])),
                Row("SAE EV raw", fmt_range([r.sae_raw for r in rs], 2), PAPER["ev_raw"]),
                Row("SAE EV rotated (gap to self)", f"{fmt_range([r.sae_rotated for r in rs])} "
                    f"({fmt_range([r.sae_self - r.sae_rotated for r in rs])})", PAPER["ev_rot"]),
            ]  # fmt: skip
            blocks.append("\n".join(lines) + "\n\n" + format_table("summary over sites", rows))
        return "\n\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [s.to_dict() for s in self.sites],
            "losses": self.losses,
            "fit_windows": self.fit_windows,
            "test_windows": self.test_windows,
            "sae": self.sae,
        }


def dyck_windows(ids: list[int], eot: int, windows: int, n_ctx: int, seed: int) -> torch.Tensor:
    """`windows` training-like windows [windows, n_ctx] of fresh bracket strings (model ids
    `ids` of `( ) [ ] { }`), each string followed by end-of-text, cut from one stream."""
    rng = np.random.default_rng(seed)
    table = np.asarray(ids)
    stream: list[int] = []
    while len(stream) < windows * n_ctx:
        for doc in dyck_sequences(256, rng):
            stream += [*table[doc].tolist(), eot]
    return torch.tensor(stream[: windows * n_ctx]).view(windows, n_ctx)


def _rows(model: GPT, tokens: torch.Tensor, site: str) -> np.ndarray:
    """Activations at `site` for windows [N, T], one row per position: [N·T, d] float64."""
    x = site_activations(model, tokens, site)
    return x.reshape(-1, x.shape[-1]).double().numpy()


def _loss(model: GPT, tokens: torch.Tensor) -> float:
    out = logits(model, tokens)
    return float(target_loss(out[:, :-1], tokens[:, 1:]))


def run_rotation(
    models: list[StudyModel],
    fit_windows: int = 256,
    test_windows: int = 128,
    sae: SAEConfig = SAEConfig(),
    seed: int = 999,
) -> RotationStudy:
    """Every model of a kind against the first of that kind, at every residual site (SAEs
    train on the models' device)."""
    by_kind: dict[str, list[StudyModel]] = {}
    for m in models:
        by_kind.setdefault(m.kind, []).append(m)
    if not any(len(ms) >= 2 for ms in by_kind.values()):
        raise StudyError("the rotation analysis needs at least two models of one kind")
    shapes = {(m.model.cfg.n_layer, m.model.cfg.d_model) for m in models}
    if len(shapes) != 1:
        raise StudyError(
            f"models of one depth and residual width are needed, got (layers, d_model) "
            f"{sorted(shapes)}"
        )
    rng = np.random.default_rng(seed)
    sites, losses = [], {}
    for kind, ms in by_kind.items():
        if len(ms) < 2:
            continue
        anchor = ms[0]
        n_ctx = min(m.model.cfg.n_ctx for m in ms)
        data = {}
        for m in ms:
            ids = m.token_ids(DYCK_SYMBOLS)
            eot = m.token_ids([EOT])[0]
            fit = dyck_windows(ids, eot, fit_windows, n_ctx, seed)
            test = dyck_windows(ids, eot, test_windows, n_ctx, seed + 1)
            losses[m.label] = _loss(m.model, test)
            data[m.label] = (fit, test)
        for site in residual_sites(anchor.model):
            b_fit, b_test = (_rows(anchor.model, t, site) for t in data[anchor.label])
            device = str(next(anchor.model.parameters()).device)
            encoder = train_sae(b_fit, sae, device)
            sae_self = sae_explained_variance(encoder, b_test)
            for other in ms[1:]:
                a_fit, a_test = (_rows(other.model, t, site) for t in data[other.label])
                rep = compare_by_rotation(a_fit, b_fit, a_test, b_test, rng)
                rotated = (a_test - a_fit.mean(0)) @ rep.rotation + b_fit.mean(0)
                sites.append(
                    RotationSite(
                        kind=kind,
                        anchor=anchor.label,
                        other=other.label,
                        site=site,
                        rotation=rep,
                        sae_self=sae_self,
                        sae_raw=sae_explained_variance(encoder, a_test),
                        sae_rotated=sae_explained_variance(encoder, rotated),
                    )
                )
    return RotationStudy(sites, losses, fit_windows, test_windows, dataclasses.asdict(sae))
