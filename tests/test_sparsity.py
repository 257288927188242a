"""AbsTopK, the L0 projection and the schedules, against independent pure-Python oracles."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_tf import (
    AbsTopK,
    SparsityConfig,
    abs_topk,
    count_nonzeros,
    l0_schedule,
    project_weights_,
    sharkfin,
)
from sparse_tf.sparsity import COLS, ROWS, SparseWeight, kept_count, topk_mask, weight_mask
from tests.helpers import tiny_model

# --------------------------------------------------------------------------------------------
# Oracles: the specification written as plainly as possible (sorting by an explicit priority).
# --------------------------------------------------------------------------------------------


def oracle_row_topk(values: list[float], k: int) -> set[int]:
    """Indices of the k largest values; ties to the lower index."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return set(order[: max(0, min(k, len(values)))])


def oracle_projection(w: torch.Tensor, budget: int, neuron_dim: int | None, j: int) -> torch.Tensor:
    """Kept mask: each neuron's top-j |w| protected, then the largest |w| up to the budget."""
    rows, cols = w.shape
    mag = w.abs().flatten().tolist()
    protected: set[int] = set()
    if neuron_dim is not None and j > 0:
        n_neurons = rows if neuron_dim == ROWS else cols
        for n in range(n_neurons):
            flat = (
                [n * cols + c for c in range(cols)]
                if neuron_dim == ROWS
                else [r * cols + n for r in range(rows)]
            )
            best = sorted(flat, key=lambda i: (-mag[i], i))[:j]
            protected.update(best)
    count = min(max(budget, len(protected)), w.numel())
    order = sorted(range(w.numel()), key=lambda i: (i not in protected, -mag[i], i))
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[order[:count]] = True
    return keep.view(rows, cols)


# Small integers make exact ties (and zeros) common, which is where selection rules differ.
tie_heavy = st.integers(min_value=-3, max_value=3).map(float)


@st.composite
def matrices(draw: st.DrawFn, max_side: int = 9) -> torch.Tensor:
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    values = draw(
        st.lists(
            st.one_of(tie_heavy, st.floats(-4, 4, allow_nan=False, width=32)),
            min_size=rows * cols,
            max_size=rows * cols,
        )
    )
    return torch.tensor(values, dtype=torch.float32).view(rows, cols)


# --------------------------------------------------------------------------------------------
# topk_mask and AbsTopK
# --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(x=matrices(), k=st.integers(-1, 12))
def test_topk_mask_matches_oracle_per_row(x: torch.Tensor, k: int) -> None:
    mask = topk_mask(x, k)
    for r in range(x.shape[0]):
        got = set(torch.nonzero(mask[r]).flatten().tolist())
        assert got == oracle_row_topk(x[r].tolist(), k)


def test_topk_mask_breaks_ties_towards_lower_index() -> None:
    x = torch.zeros(2, 6)
    assert topk_mask(x, 2).tolist() == [[True, True, False, False, False, False]] * 2
    x = torch.tensor([[1.0, 2.0, 1.0, 1.0, 2.0]])
    assert topk_mask(x, 3).tolist() == [[True, True, False, False, True]]


@settings(max_examples=150, deadline=None)
@given(x=matrices(), data=st.data())
def test_abs_topk_keeps_k_largest_magnitudes_with_sign(
    x: torch.Tensor, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, x.shape[1]))
    y = abs_topk(x, k)
    for r in range(x.shape[0]):
        kept = oracle_row_topk(x[r].abs().tolist(), k)
        for c in range(x.shape[1]):
            assert y[r, c].item() == (x[r, c].item() if c in kept else 0.0)


def test_abs_topk_gradient_is_zero_outside_kept_entries() -> None:
    x = torch.randn(5, 7, 32, requires_grad=True)
    y = abs_topk(x, 8)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    kept = y.detach() != 0
    assert (kept.sum(-1) == 8).all()
    torch.testing.assert_close(x.grad, torch.where(kept, upstream, 0.0), rtol=0, atol=0)


def test_abs_topk_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match=r"k=0 must be in \[1, 8\]"):
        abs_topk(torch.randn(2, 8), 0)
    with pytest.raises(ValueError, match="must be in"):
        abs_topk(torch.randn(2, 8), 9)


def test_abstopk_module_uses_floor_of_frac_times_width() -> None:
    x = torch.randn(4, 30)
    assert ((AbsTopK(0.25)(x) != 0).sum(-1) == 7).all()  # int(7.5)
    assert AbsTopK(None)(x) is x
    with pytest.raises(ValueError, match="keeps no entry"):
        AbsTopK(0.25)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"frac=1.5 must be in \(0, 1\]"):
        AbsTopK(1.5)


def test_abs_topk_works_in_bfloat16() -> None:
    x = torch.randn(16, 64).bfloat16()
    y = abs_topk(x, 16)
    assert y.dtype == torch.bfloat16
    assert ((y != 0).sum(-1) == 16).all()


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


class OneMatrix(nn.Module):
    """A model with one declared sparse matrix, for exercising projection in isolation."""

    def __init__(self, w: torch.Tensor, kind: str, neuron_dim: int | None) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.kind, self.neuron_dim = kind, neuron_dim

    def sparse_weights(self) -> list[SparseWeight]:
        return [SparseWeight("w", self.w, self.kind, self.neuron_dim)]  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    w=matrices(),
    l0=st.floats(0.01, 1.0),
    j=st.integers(0, 5),
    neuron_dim=st.sampled_from([ROWS, COLS, None]),
    kind=st.sampled_from(["block", "embedding"]),
)
def test_projection_keeps_exactly_the_oracle_set(
    w: torch.Tensor, l0: float, j: int, neuron_dim: int | None, kind: str
) -> None:
    cfg = SparsityConfig(l0=0.5, min_per_neuron=j, embed_mult=3.0)
    model = OneMatrix(w, kind, neuron_dim)
    frac = l0 if kind == "block" else min(1.0, 3.0 * l0)
    budget = max(1, round(frac * w.numel()))
    expected = oracle_projection(w, budget, neuron_dim, j)
    counts = project_weights_(model, l0, cfg)
    assert counts == {"w": int(expected.sum())}
    torch.testing.assert_close(model.w.detach(), torch.where(expected, w, 0.0), rtol=0, atol=0)


def test_projection_count_is_budget_or_protection_whichever_is_larger() -> None:
    cfg = SparsityConfig(l0=1 / 64, min_per_neuron=4)
    w = torch.randn(64, 32)
    # Budget round(2048/64) = 32 < protection 64 rows x 4 = 256: protection wins.
    assert kept_count(SparseWeight("w", nn.Parameter(w), "block", ROWS), 1 / 64, cfg) == 256
    # Columns are the neurons: 32 x 4 = 128.
    assert kept_count(SparseWeight("w", nn.Parameter(w), "block", COLS), 1 / 64, cfg) == 128
    # A generous budget is kept exactly.
    assert kept_count(SparseWeight("w", nn.Parameter(w), "block", ROWS), 0.25, cfg) == 512
    # Embeddings: min(1, l0 * embed_mult), never protected.
    assert kept_count(SparseWeight("w", nn.Parameter(w), "embedding", None), 1 / 64, cfg) == 128
    assert kept_count(SparseWeight("w", nn.Parameter(w), "embedding", None), 0.5, cfg) == 2048


def test_protection_saves_starved_neurons_on_the_right_axis() -> None:
    """One huge column (or row) would win the whole budget without protection."""
    cfg = SparsityConfig(l0=0.1, min_per_neuron=2)
    w = torch.rand(10, 10) + 0.1
    w[:, 3] += 100.0  # column 3 dominates
    w[6, :] += 100.0  # row 6 dominates
    for neuron_dim in (ROWS, COLS):
        model = OneMatrix(w, "block", neuron_dim)
        project_weights_(model, 0.1, cfg)
        per_neuron = (model.w != 0).sum(dim=1 - neuron_dim)  # nonzeros of each neuron
        assert (per_neuron >= 2).all()
        assert int((model.w != 0).sum()) == 20  # protection (10 x 2) > budget (10)
    # Without protection the dominant row and column take the whole budget.
    model = OneMatrix(w, "block", ROWS)
    project_weights_(model, 0.1, dataclasses.replace(cfg, min_per_neuron=0))
    dominant = torch.zeros(10, 10, dtype=torch.bool)
    dominant[:, 3] = dominant[6, :] = True
    kept = model.w != 0
    assert int(kept.sum()) == 10
    assert not kept[~dominant].any()


def test_projection_on_gpt_holds_invariants_and_touches_only_declared_matrices() -> None:
    model = tiny_model(bigram=True, attn_sink=True, pos_emb=True)
    with torch.no_grad():
        for p in model.parameters():  # give dense params non-trivial values
            p.add_(torch.randn_like(p) * 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SparsityConfig(l0=1 / 16)
    counts = project_weights_(model, 1 / 16, cfg)

    declared = {w.name: w for w in model.sparse_weights()}
    assert counts == count_nonzeros(model)
    for name, p in model.named_parameters():
        if name not in declared:  # biases, norms, sinks, bigram
            assert torch.equal(p, before[name]), name
            continue
        w = declared[name]
        assert counts[name] == kept_count(w, 1 / 16, cfg)
        kept = p != 0
        assert torch.equal(p[kept], before[name][kept])  # survivors keep their exact values
        if w.neuron_dim is not None:
            per_neuron = kept.sum(dim=1 - w.neuron_dim)
            assert int(per_neuron.min()) >= cfg.min_per_neuron, name


def test_gpt_declares_the_right_matrices_and_axes() -> None:
    model = tiny_model(pos_emb=True)
    axes = {w.name: (w.kind, w.neuron_dim) for w in model.sparse_weights()}
    assert axes["embed.weight"] == ("embedding", None)
    assert axes["pos_embed.weight"] == ("positional", None)  # embedding density by default
    assert axes["unembed.weight"] == ("embedding", None)
    for i in range(2):
        assert axes[f"blocks.{i}.attn.qkv.weight"] == ("block", ROWS)
        assert axes[f"blocks.{i}.attn.out_proj.weight"] == ("block", COLS)
        assert axes[f"blocks.{i}.mlp.in_proj.weight"] == ("block", ROWS)
        assert axes[f"blocks.{i}.mlp.out_proj.weight"] == ("block", COLS)
    two_d = {n for n, p in model.named_parameters() if p.dim() >= 2 and n != "bigram"}
    assert set(axes) == two_d
    # Named from the model's structure: each name is the parameter's own.
    params = dict(model.named_parameters())
    assert all(w.param is params[w.name] for w in model.sparse_weights())


def test_projection_is_idempotent() -> None:
    model = tiny_model()
    cfg = SparsityConfig(l0=1 / 32)
    project_weights_(model, 1 / 32, cfg)
    once = {n: p.detach().clone() for n, p in model.named_parameters()}
    project_weights_(model, 1 / 32, cfg)
    for n, p in model.named_parameters():
        assert torch.equal(p, once[n]), n


def test_projection_at_l0_one_changes_nothing() -> None:
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    counts = project_weights_(model, 1.0, SparsityConfig(l0=0.5))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert counts == {w.name: w.param.numel() for w in model.sparse_weights()}


def test_projection_ties_are_deterministic() -> None:
    """An all-equal matrix keeps the lowest flat indices (and protection's lowest per neuron)."""
    model = OneMatrix(torch.ones(4, 6), "block", None)
    project_weights_(model, 0.25, SparsityConfig(l0=0.25, min_per_neuron=0))
    assert torch.equal(model.w.flatten() != 0, torch.arange(24) < 6)
    model = OneMatrix(torch.ones(4, 6), "block", COLS)
    mask = weight_mask(model.sparse_weights()[0], 0.25, SparsityConfig(l0=0.25, min_per_neuron=1))
    assert mask[0].all()
    assert not mask[1:].any()


def test_projection_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"l0=0 must be in \(0, 1\]"):
        project_weights_(tiny_model(), 0, SparsityConfig(l0=0.5))
    with pytest.raises(TypeError, match="does not declare its sparse matrices"):
        project_weights_(nn.Linear(3, 3), 0.5, SparsityConfig(l0=0.5))


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 7, 100, 1001])
def test_l0_schedule_endpoints_and_monotonicity(total: int) -> None:
    cfg = SparsityConfig(l0=1 / 64)
    values = [l0_schedule(s, total, cfg) for s in range(total)]
    assert values[-1] == cfg.l0  # the last step always lands on the target
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert all(cfg.l0 <= v <= 1.0 for v in values)
    if total >= 100:
        assert values[0] == 1.0  # dense before 1% of training
        assert values[total // 2] == cfg.l0  # target from 50% on
        step = total // 4  # inside the anneal: linear in the fraction of training done
        progress = (step + 1) / total
        expected = 1 + (cfg.l0 - 1) * (progress - 0.01) / (0.5 - 0.01)
        assert l0_schedule(step, total, cfg) == pytest.approx(expected, rel=1e-12)


def test_l0_schedule_without_anneal_is_constant() -> None:
    cfg = SparsityConfig(l0=0.1, anneal_start=0.0, anneal_end=0.0)
    assert {l0_schedule(s, 50, cfg) for s in range(50)} == {0.1}


def test_sharkfin_is_sqrt_ratio_and_one_after_anneal() -> None:
    cfg = SparsityConfig(l0=1 / 64)
    total = 1000
    values = [sharkfin(s, total, cfg) for s in range(total)]
    assert values[0] == pytest.approx(1 / 8)  # √(1/64 / 1)
    assert all(v == 1.0 for v in values[500:])
    assert all(a <= b for a, b in itertools.pairwise(values))
    for s in (0, 100, 250, 499):
        assert values[s] == pytest.approx(math.sqrt(cfg.l0 / l0_schedule(s, total, cfg)))
    off = dataclasses.replace(cfg, sharkfin=False)
    assert {sharkfin(s, total, off) for s in range(total)} == {1.0}


def test_schedules_reject_out_of_range_steps() -> None:
    cfg = SparsityConfig(l0=0.5)
    with pytest.raises(ValueError, match=r"step=10 is outside \[0, total_steps=10\)"):
        l0_schedule(10, 10, cfg)
    with pytest.raises(ValueError, match="total_steps=0"):
        sharkfin(0, 0, cfg)
