"""SparseOptimizer: the order of the recipe's operations, schedules, checkpoints, overfitting."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from sparse_tf import (
    OptimConfig,
    SparseOptimizer,
    SparsityConfig,
    StepStats,
    count_nonzeros,
    lm_loss,
    lr_schedule,
    project_weights_,
)
from sparse_tf.sparsity import kept_count
from tests.helpers import tiny_model, tokens


def backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    loss = lm_loss(model(x), x)
    loss.backward()
    return loss


def train(model: torch.nn.Module, opt: SparseOptimizer, x: torch.Tensor, steps: int) -> StepStats:
    """`steps` full training steps on one batch; the stats of the last."""
    for _ in range(steps):
        backward(model, x)
        stats = opt.step()
        opt.zero_grad()
    return stats


def test_step_replays_the_recipe_in_order() -> None:
    """normalise grads → Adam → project → decay, checked against a manual replay."""
    model = tiny_model(attn_sink=True)
    reference = copy.deepcopy(model)
    ocfg = OptimConfig(lr=3e-3, warmup_frac=0.0)
    scfg = SparsityConfig(l0=0.1, anneal_start=0.0, anneal_end=0.0)
    total = 10
    opt = SparseOptimizer(model, ocfg, scfg, total)
    x = tokens(model.cfg)

    # Manual replay of one step on the copy.
    project_weights_(reference, 0.1, scfg)  # the constructor projects (no anneal)
    backward(reference, x)
    grads = [p.grad for p in reference.parameters()]
    rms = torch.sqrt(sum((g.double() ** 2).sum() for g in grads) / sum(g.numel() for g in grads))
    for g in grads:
        g.div_(rms.float() + 1e-5)
    lr = 3e-3 * (total - 0) / total  # no warmup, linear decay; sharkfin is 1 without anneal
    adam = torch.optim.Adam(reference.parameters(), lr=lr, betas=(0.9, 0.95), eps=0.1)
    adam.step()
    project_weights_(reference, 0.1, scfg)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.dim() >= 2 and name != "bigram":
                p.mul_(1 - 0.1 * lr)

    backward(model, x)
    stats = opt.step()
    assert stats.step == 0
    assert stats.lr == pytest.approx(lr)
    assert stats.l0 == 0.1
    assert stats.grad_rms.item() == pytest.approx(rms.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
        if p.dim() >= 2 and name != "bigram":
            assert torch.equal(p == 0, q == 0), name  # identical kept sets


def test_gradients_are_normalised_to_unit_rms() -> None:
    model = tiny_model()
    opt = SparseOptimizer(model, OptimConfig(), None, 5)
    backward(model, tokens(model.cfg))
    for p in model.parameters():
        p.grad.mul_(123.0)
    raw = torch.cat([p.grad.flatten() for p in model.parameters()]).pow(2).mean().sqrt()
    stats = opt.step()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    assert stats.grad_rms.item() == pytest.approx(raw.item(), rel=1e-5)

    untouched = SparseOptimizer(model, OptimConfig(grad_rms=None), None, 5)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    stats = untouched.step()
    assert all((p.grad == 3.0).all() for p in model.parameters())
    assert stats.grad_rms.item() == pytest.approx(3.0)


def test_decay_hits_only_matrices_and_follows_projection() -> None:
    """With zero gradients Adam moves nothing: only decay acts, on ≥2-D non-bigram weights."""
    model = tiny_model(attn_sink=True, pos_emb=True)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.sink_logit.fill_(0.3)
            b.attn.qkv.bias.fill_(0.2)
    scfg = SparsityConfig(l0=0.2, anneal_start=0.0, anneal_end=0.0)
    opt = SparseOptimizer(model, OptimConfig(lr=0.5, warmup_frac=0.0, lr_decay=False), scfg, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    factor = 1 - 0.1 * 0.5
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name != "bigram":
            torch.testing.assert_close(p, before[name] * factor, rtol=1e-6, atol=0, msg=name)
        else:
            assert torch.equal(p, before[name]), name


def test_l0_holds_after_every_step_and_is_reported() -> None:
    model = tiny_model()
    scfg = SparsityConfig(l0=1 / 32, anneal_start=0.1, anneal_end=0.6)
    total = 20
    opt = SparseOptimizer(model, OptimConfig(), scfg, total)
    weights = model.sparse_weights()
    x = tokens(model.cfg)
    l0s = []
    for _ in range(total):
        backward(model, x)
        stats = opt.step()
        opt.zero_grad()
        l0s.append(stats.l0)
        assert stats.nonzeros == count_nonzeros(model)
        assert stats.nonzeros == {w.name: kept_count(w, stats.l0, scfg) for w in weights}
    assert l0s[0] == 1.0
    assert l0s[-1] == 1 / 32
    assert all(a >= b for a, b in itertools.pairwise(l0s))


def test_lr_combines_warmup_decay_and_sharkfin() -> None:
    ocfg = OptimConfig(lr=1.0, warmup_frac=0.1)
    assert [lr_schedule(s, 100, ocfg) for s in (0, 4, 9, 10, 55, 99)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 0.5, 1 / 90]
    )
    assert lr_schedule(50, 100, OptimConfig(warmup_frac=0.1, lr_decay=False)) == 1.0
    with pytest.raises(ValueError, match="outside"):
        lr_schedule(100, 100, ocfg)

    opt = SparseOptimizer(tiny_model(), ocfg, SparsityConfig(l0=1 / 64), 100)
    assert opt.lr_at(0) == pytest.approx(0.1 / 8)  # warmup 1/10, sharkfin √(1/64)
    assert opt.lr_at(60) == pytest.approx(40 / 90)  # annealing done: sharkfin 1
    dense = SparseOptimizer(tiny_model(), ocfg, None, 100)
    assert dense.lr_at(0) == pytest.approx(0.1)
    assert dense.l0_at(0) == 1.0


def test_dense_run_forces_no_zeros() -> None:
    model = tiny_model(afrac=None)
    opt = SparseOptimizer(model, OptimConfig(), None, 5)
    stats = train(model, opt, tokens(model.cfg), 5)
    assert stats.l0 == 1.0
    for w in model.sparse_weights():
        assert (w.param != 0).all(), w.name


def test_no_anneal_projects_on_construction() -> None:
    model = tiny_model()
    scfg = SparsityConfig(l0=1 / 16, anneal_start=0.0, anneal_end=0.0)
    SparseOptimizer(model, OptimConfig(), scfg, 10)
    assert count_nonzeros(model) == {
        w.name: kept_count(w, 1 / 16, scfg) for w in model.sparse_weights()
    }
    annealed = tiny_model()
    before = [p.detach().clone() for p in annealed.parameters()]
    SparseOptimizer(annealed, OptimConfig(), SparsityConfig(l0=1 / 16), 10)
    assert all(torch.equal(a, b) for a, b in zip(before, annealed.parameters(), strict=True))


def test_state_dict_resume_continues_bit_identically() -> None:
    scfg = SparsityConfig(l0=1 / 16, anneal_start=0.0, anneal_end=0.5)
    total, split = 12, 5
    x = tokens(tiny_model().cfg)

    torch.manual_seed(3)
    straight = tiny_model()
    train(straight, SparseOptimizer(straight, OptimConfig(), scfg, total), x, total)

    torch.manual_seed(3)
    first = tiny_model()
    opt = SparseOptimizer(first, OptimConfig(), scfg, total)
    train(first, opt, x, split)
    model_state = copy.deepcopy(first.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())

    resumed = tiny_model()  # different init, fully overwritten by the checkpoint
    resumed.load_state_dict(model_state)
    opt = SparseOptimizer(resumed, OptimConfig(), scfg, total)
    opt.load_state_dict(opt_state)
    train(resumed, opt, x, total - split)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_optimizer_errors_are_clear() -> None:
    model = tiny_model()
    opt = SparseOptimizer(model, OptimConfig(), None, 1)
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.step()
    backward(model, tokens(model.cfg))
    opt.step()
    with pytest.raises(RuntimeError, match="all 1 scheduled steps"):
        opt.step()
    other = SparseOptimizer(tiny_model(), OptimConfig(), None, 7)
    with pytest.raises(ValueError, match="saved for total_steps=1, this run has 7"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="total_steps=0"):
        SparseOptimizer(model, OptimConfig(), None, 0)


def test_tiny_sparse_model_overfits_one_batch_under_the_l0_constraint() -> None:
    """The whole recipe learns: loss < 1/3 of its start in 300 steps at L0 1/16, the L0 count
    exact after every step. The bigram table is off so the sparse weights must do the work."""
    model = tiny_model(vocab_size=64, n_ctx=32, bigram=False)
    x = torch.randint(0, 64, (8, 32))
    scfg = SparsityConfig(l0=1 / 16)
    total = 300
    opt = SparseOptimizer(model, OptimConfig(), scfg, total)
    weights = model.sparse_weights()
    start = None
    for _ in range(total):
        loss = backward(model, x)
        stats = opt.step()
        opt.zero_grad()
        start = loss.item() if start is None else start
        for w in weights:
            assert int(torch.count_nonzero(w.param)) == kept_count(w, stats.l0, scfg), w.name
    final = lm_loss(model(x), x).item()
    assert start == pytest.approx(math.log(64), rel=0.05)
    assert final < start / 3, (start, final)
