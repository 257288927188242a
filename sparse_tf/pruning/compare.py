"""Comparing circuit sizes across models: the statistics of the paper's Figure 2.

- `match_loss`: which models of a family (dense baselines at several widths) stand for a given
  pretraining loss (the weight-sparse model's): the two whose losses bracket it, weighted for
  interpolation, or the nearest one when none bracket it; `bracketing_matches`: every pair
  that brackets it.
- `LossMatch.value`: a quantity (circuit edges, nodes) at the matched loss, interpolated
  log-linearly between the two bracketing models (edges grow geometrically with width, and so
  roughly linearly in log-edges as the loss falls).
- `geomean_interval`: the geometric mean of ratios (dense/sparse edges per task) with a
  percentile-bootstrap interval over the items (tasks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparse_tf.errors import SparseTFError


class CompareError(SparseTFError):
    """Inputs a comparison cannot use (no models, non-positive values)."""


MatchMethod = Literal["exact", "interpolated", "nearest"]


@dataclass(frozen=True)
class LossMatch:
    """The models standing for a pretraining loss `loss`: one (`exact`, `nearest`) or two
    (`interpolated`) keys, with weights that sum to 1."""

    loss: float
    method: MatchMethod
    keys: tuple[str, ...]
    weights: tuple[float, ...]

    def value(self, values: Mapping[str, float]) -> float:
        """The weighted geometric mean of `values` over the matched keys: log-linear
        interpolation in the loss between the two bracketing models (values must be > 0)."""
        for k in self.keys:
            if not values[k] > 0:
                raise CompareError(f"{k}: value {values[k]!r} must be > 0 to interpolate in logs")
        return math.exp(
            sum(w * math.log(values[k]) for k, w in zip(self.keys, self.weights, strict=True))
        )

    def describe(self, losses: Mapping[str, float]) -> str:
        """One phrase, e.g. `interpolated between d128 (val 3.1000) and d256 (val 2.9000)`."""
        named = [f"{k} (val {losses[k]:.4f})" for k in self.keys]
        if self.method == "interpolated":
            return f"interpolated between {named[0]} and {named[1]} at val {self.loss:.4f}"
        return f"{self.method} to val {self.loss:.4f}: {named[0]}"

    def to_dict(self) -> dict[str, object]:
        return {
            "loss": self.loss,
            "method": self.method,
            "keys": list(self.keys),
            "weights": list(self.weights),
        }


def match_loss(losses: Mapping[str, float], loss: float, *, interpolate: bool = True) -> LossMatch:
    """Match `loss` among models with pretraining `losses` {key: loss}: the model with exactly
    that loss; else the closest loss below and the closest above (interpolation weight by
    distance in loss); else, when `loss` lies outside their range or `interpolate` is off, the
    nearest model (never extrapolated: a line through two models beyond both says little)."""
    finite = {k: float(v) for k, v in losses.items() if math.isfinite(v)}
    if not finite:
        raise CompareError("no model with a finite loss to match")
    for k, v in finite.items():
        if v == loss:
            return LossMatch(loss, "exact", (k,), (1.0,))
    below = {k: v for k, v in finite.items() if v < loss}
    above = {k: v for k, v in finite.items() if v > loss}
    if below and above and interpolate:
        lo = max(below, key=lambda k: (below[k], k))  # the closest from below
        hi = min(above, key=lambda k: (above[k], k))
        t = (loss - below[lo]) / (above[hi] - below[lo])  # 0 at `lo`'s loss, 1 at `hi`'s
        # Ordered by loss, higher first: the narrower, weaker model, then the stronger one.
        return LossMatch(loss, "interpolated", (hi, lo), (t, 1.0 - t))
    nearest = min(finite, key=lambda k: (abs(finite[k] - loss), k))
    return LossMatch(loss, "nearest", (nearest,), (1.0,))


def bracketing_matches(losses: Mapping[str, float], loss: float) -> list[LossMatch]:
    """Every interpolation of `loss` between one model above it and one below it, not only
    `match_loss`'s closest pair: where a family's loss is not monotone in its size (a wider
    model whose LR sweep stopped short of its optimum), several pairs bracket the loss, and how
    much the matched figure depends on the pair is a fact to report. Ordered by the loss above,
    then below, each closest first; empty when no pair brackets it."""
    finite = {k: float(v) for k, v in losses.items() if math.isfinite(v)}
    above = sorted((v, k) for k, v in finite.items() if v > loss)
    below = sorted(((v, k) for k, v in finite.items() if v < loss), reverse=True)
    matches = []
    for hi_loss, hi in above:
        for lo_loss, lo in below:
            t = (loss - lo_loss) / (hi_loss - lo_loss)
            matches.append(LossMatch(loss, "interpolated", (hi, lo), (t, 1.0 - t)))
    return matches


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high] at `level`, from `n` items."""

    estimate: float
    low: float
    high: float
    n: int
    level: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "level": self.level,
        }


def geomean_interval(
    values: Sequence[float], *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> Interval:
    """Geometric mean of `values` (> 0) and its percentile-bootstrap interval: the items are
    resampled with replacement `n_boot` times and the interval is the central `level` of the
    resampled geometric means. One item gives a zero-width interval: there is no spread to
    resample, which says nothing about the uncertainty (report `n` beside it)."""
    if not values:
        raise CompareError("no values: the geometric mean of nothing is undefined")
    if not 0 < level < 1:
        raise CompareError(f"level {level}: must be in (0, 1)")
    if n_boot < 1:
        raise CompareError(f"n_boot {n_boot}: must be >= 1")
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise CompareError(f"values must be finite and > 0, got {list(values)}")
    logs = np.log(arr)
    estimate = float(np.exp(logs.mean()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(logs), size=(n_boot, len(logs)))
    means = logs[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(estimate, float(np.exp(low)), float(np.exp(high)), len(logs), level)
