"""The statistics of the circuit-size comparison (`sparse_tf.pruning.compare`): matching a
pretraining loss among dense baselines, and the bootstrap interval of a geometric mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparse_tf.pruning.compare import (
    CompareError,
    bracketing_matches,
    geomean_interval,
    match_loss,
)

# A known curve: a wider dense model has a lower loss and a larger circuit, its edges growing
# geometrically as the loss falls: log edges = 20 - 4 * loss.
LOSSES = {"d64": 3.4, "d512": 2.7, "d128": 3.1, "d256": 2.9}  # not in width order on purpose


def _edges(loss: float) -> float:
    return math.exp(20 - 4 * loss)


def test_interpolation_recovers_a_log_linear_curve_between_the_bracketing_models() -> None:
    values = {k: _edges(v) for k, v in LOSSES.items()}
    for loss in (3.0, 3.25, 2.75, 3.39):
        m = match_loss(LOSSES, loss)
        assert m.method == "interpolated"
        assert m.value(values) == pytest.approx(_edges(loss), rel=1e-12)
    m = match_loss(LOSSES, 3.0)
    assert m.keys == ("d128", "d256")  # the closest losses on either side, higher first
    assert m.weights == pytest.approx((0.5, 0.5))
    assert "interpolated between d128 (val 3.1000) and d256 (val 2.9000)" in m.describe(LOSSES)


def test_a_closer_bracket_wins_whatever_the_width_order() -> None:
    # d256 trained badly: its loss is above d128's. The bracket is by loss, not by width.
    losses = {"d64": 3.4, "d128": 3.0, "d256": 3.2, "d512": 2.7}
    assert match_loss(losses, 3.1).keys == ("d256", "d128")
    assert match_loss(losses, 2.8).keys == ("d128", "d512")


def test_every_bracketing_pair_is_listed_closest_first_when_loss_is_not_monotone() -> None:
    # d128 beat d256 (whose LR sweep stopped short): two pairs bracket 2.87, and the closest
    # (match_loss's) comes first. Each pair interpolates its own two models' values exactly.
    losses = {"d64": 2.90, "d128": 2.72, "d256": 2.74, "d32": 3.3, "bad": math.nan}
    pairs = bracketing_matches(losses, 2.87)
    assert [m.keys for m in pairs] == [
        ("d64", "d256"), ("d64", "d128"), ("d32", "d256"), ("d32", "d128")
    ]  # fmt: skip
    assert pairs[0].keys == match_loss(losses, 2.87).keys
    values = {k: _edges(v) for k, v in losses.items() if math.isfinite(v)}
    for m in pairs:
        assert m.method == "interpolated"
        assert sum(m.weights) == pytest.approx(1.0)
        assert m.value(values) == pytest.approx(_edges(2.87), rel=1e-12)  # on the curve
    assert bracketing_matches(losses, 2.0) == []  # below every model: no pair
    # A model at exactly the loss is on neither side.
    assert [m.keys for m in bracketing_matches(losses, 2.90)] == [
        ("d32", "d256"), ("d32", "d128")
    ]  # fmt: skip


def test_an_equal_loss_is_exact_and_one_outside_the_range_takes_the_nearest() -> None:
    exact = match_loss(LOSSES, 2.9)
    assert (exact.method, exact.keys, exact.weights) == ("exact", ("d256",), (1.0,))
    low = match_loss(LOSSES, 2.0)
    assert (low.method, low.keys) == ("nearest", ("d512",))
    high = match_loss(LOSSES, 5.0)
    assert (high.method, high.keys) == ("nearest", ("d64",))
    assert high.value({"d64": 7.0}) == pytest.approx(7.0)
    assert high.describe(LOSSES) == "nearest to val 5.0000: d64 (val 3.4000)"
    near = match_loss(LOSSES, 3.05, interpolate=False)
    assert (near.method, near.keys) == ("nearest", ("d128",))


def test_matching_skips_non_finite_losses_and_refuses_nothing() -> None:
    assert match_loss({"a": math.nan, "b": 3.0, "c": 2.0}, 2.5).keys == ("b", "c")
    with pytest.raises(CompareError, match="no model"):
        match_loss({"a": math.inf}, 3.0)
    with pytest.raises(CompareError, match="> 0"):
        match_loss(LOSSES, 3.0).value({"d128": 0.0, "d256": 5.0})


def test_geomean_interval_of_two_values_spans_them() -> None:
    # Resamples of [1, 100]: both 1 (p 1/4), one of each (1/2), both 100 (1/4); the central 95%
    # of their geometric means runs from 1 to 100, around the geometric mean 10.
    iv = geomean_interval([1.0, 100.0], n_boot=20_000)
    assert iv.estimate == pytest.approx(10.0)
    assert (iv.low, iv.high) == (pytest.approx(1.0), pytest.approx(100.0))
    assert iv.n == 2
    same = geomean_interval([4.0, 4.0, 4.0])
    assert (same.estimate, same.low, same.high) == (pytest.approx(4.0),) * 3


def test_geomean_interval_matches_the_normal_theory_on_a_large_lognormal_sample() -> None:
    rng = np.random.default_rng(1)
    sigma, n = 0.5, 400
    values = np.exp(rng.normal(1.0, sigma, size=n))
    iv = geomean_interval(list(values), n_boot=4000, seed=3)
    logs = np.log(values)
    assert iv.estimate == pytest.approx(math.exp(logs.mean()))
    half = 1.96 * logs.std(ddof=1) / math.sqrt(n)  # the interval of a mean of logs
    assert math.log(iv.high) - math.log(iv.estimate) == pytest.approx(half, rel=0.15)
    assert math.log(iv.estimate) - math.log(iv.low) == pytest.approx(half, rel=0.15)
    assert iv.low < math.exp(1.0) < iv.high  # the true geometric mean, e^mu
    assert geomean_interval(list(values), n_boot=4000, seed=3) == iv  # seeded


def test_geomean_interval_refuses_what_has_no_geometric_mean() -> None:
    for bad in ([], [1.0, 0.0], [2.0, -1.0], [math.inf]):
        with pytest.raises(CompareError):
            geomean_interval(bad)
    with pytest.raises(CompareError, match="level"):
        geomean_interval([1.0], level=1.0)
