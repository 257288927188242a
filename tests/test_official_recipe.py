"""The `paper-official` preset's optimizer step against the official train.py's, computed here
by hand in plain torch from that script's formulas (its pfrac / expansion-factor bookkeeping,
its Adam, its apply_topk_ with per-neuron protection by a 1e10 score, its decay), step by step
on a tiny model. The model's forward pass gives the gradients of both (it is not under test).

The positional table is train.py's `wpe`: more rows than the context (block_size 1024 at n_ctx
256; here 32 at 8), zeroed and then trained (its module is frozen, not its parameter), counted in
the gradient RMS and decayed, and projected by apply_topk_'s last branch: neither wte nor lm_head,
so the block L0, int(L0 · numel) over all its rows, without per-neuron protection."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, preset

T = 10  # total steps
N_CTX, POS_ROWS = 8, 32  # the positional table has 4 x n_ctx rows, as block_size 1024 at 256
LR, WD, EPS, BETAS = 1e-2, 0.1, 0.1, (0.9, 0.95)
WARMUP_FRAC, START, STOP, L0, MIN_ALIVE = 0.2, 0.1, 0.7, 0.2, 4
# sparse_tf name -> (official role, the neuron-wise top-k dim of official topk_neuronwise_dim)
ROLES = {
    "embed.weight": ("wte", None),
    "unembed.weight": ("lm_head", None),
    "pos_embed.weight": ("wpe", None),
    "blocks.0.attn.qkv.weight": ("c_attn", 1),
    "blocks.0.attn.out_proj.weight": ("c_proj", 0),
    "blocks.0.mlp.in_proj.weight": ("c_fc", 1),
    "blocks.0.mlp.out_proj.weight": ("c_proj", 0),
}


def grads(model: GPT, params: dict[str, Tensor], toks: Tensor) -> dict[str, Tensor]:
    """The official loss's gradient at `params`: CE of logits[:, :-1] against toks[:, 1:]."""
    scratch = copy.deepcopy(model)
    scratch.load_state_dict(params)
    logits = scratch(toks)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in scratch.named_parameters()}


def official_step(
    i: int, params: dict[str, Tensor], g: dict[str, Tensor], adam: dict, d_model: int
) -> None:
    """One iteration of the official train.py's loop, in place on `params`."""
    ef = d_model / 256  # expansion_factor (expansion_factor_mlp = ef: d_mlp = 4 d_model)
    pfrac = L0 * ef * ef  # the final pfrac whose block L0frac is L0
    warm = int(WARMUP_FRAC * T)
    lr = LR * min(1, 1 - (i - warm) / (T - warm))
    if i < warm:
        lr = LR * i / warm
    progress = min(1, max(0, (i - START * T) / (STOP * T - START * T)))
    this_pfrac = ef**2 + (pfrac - ef**2) * progress  # pfrac_anneal_initial = "max" = ef²
    lr = lr * (pfrac / this_pfrac) ** 0.5
    # gradient RMS over every parameter
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g.values()))
    rms = norm / math.sqrt(sum(x.numel() for x in g.values()))
    g = {n: x / (rms.float() + 1e-5) for n, x in g.items()}
    # Adam (torch's formula, written out)
    adam["t"] += 1
    t = adam["t"]
    for n, p in params.items():
        m = (
            adam.setdefault("m" + n, torch.zeros_like(p))
            .mul_(BETAS[0])
            .add_(g[n], alpha=1 - BETAS[0])
        )
        v = adam.setdefault("v" + n, torch.zeros_like(p)).mul_(BETAS[1])
        v.add_(g[n] * g[n], alpha=1 - BETAS[1])
        m_hat, v_hat = m / (1 - BETAS[0] ** t), v / (1 - BETAS[1] ** t)
        p.sub_(lr * m_hat / (v_hat.sqrt() + EPS))
    # apply_topk_
    embbias = pfrac + (ef - pfrac) * (this_pfrac - pfrac) / (ef * ef - pfrac)
    for n, (role, dim) in ROLES.items():
        p = params[n]
        # Only wte and lm_head take the embedding density; wpe falls to the block rule.
        frac = min(embbias / ef if role in ("wte", "lm_head") else this_pfrac / (ef * ef), 1)
        k = min(int(frac * p.numel()), p.numel())
        score = p.abs()
        if dim is not None:
            n_neurons = p.shape[1 - dim]
            assert MIN_ALIVE * n_neurons <= k  # the official assert
            top = torch.topk(score, MIN_ALIVE, dim=dim).indices
            score = score.scatter(dim, top, 1e10)
        keep = torch.zeros(p.numel(), dtype=torch.bool)
        keep[torch.topk(score.flatten(), k).indices] = True
        p.mul_(keep.view_as(p))
    # decoupled decay of every ≥2-D parameter but the bigram table
    for n, p in params.items():
        if p.dim() > 1 and n != "bigram":
            p.sub_(WD * lr * p)


def official_configs() -> tuple[OptimConfig, SparsityConfig]:
    """paper-official's optimizer and sparsity configs, at this test's scale."""
    cfg = preset("paper-official")
    optim = dataclasses.replace(cfg.optim, lr=LR, warmup_frac=WARMUP_FRAC)
    sparsity = dataclasses.replace(cfg.sparsity, l0=L0, anneal_start=START, anneal_end=STOP)
    return optim, sparsity


def run(optim: OptimConfig, sparsity: SparsityConfig) -> tuple[dict, list[dict], list[dict]]:
    """The initial parameters, and the parameters after each step: ours, and the official
    ones computed by hand from the same point."""
    torch.manual_seed(0)
    # paper-official's model (its positional table: zeros, more rows than n_ctx) made tiny.
    cfg = dataclasses.replace(
        preset("paper-official").model,
        vocab_size=32,
        n_ctx=N_CTX,
        n_layer=1,
        d_model=32,
        d_mlp=128,
        pos_rows=POS_ROWS,
    )
    model = GPT(cfg)
    toks = torch.randint(0, 32, (4, 8))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    init = {n: p.clone() for n, p in params.items()}
    opt = SparseOptimizer(model, optim, sparsity, total_steps=T)
    ours, theirs, adam = [], [], {"t": 0}
    for i in range(T):
        g = grads(model, params, toks)
        official_step(i, params, g, adam, cfg.d_model)
        F.cross_entropy(model(toks)[:, :-1].reshape(-1, 32), toks[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
        ours.append({n: p.detach().clone() for n, p in model.named_parameters()})
        theirs.append({n: p.clone() for n, p in params.items()})
        params = {n: p.clone() for n, p in ours[-1].items()}  # each step from the same point
    return init, ours, theirs


def test_paper_official_takes_the_official_step() -> None:
    init, ours, theirs = run(*official_configs())
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for name in a:
            assert torch.equal(a[name] != 0, b[name] != 0), f"step {i}: {name} kept set"
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
    assert all(torch.equal(ours[0][n], init[n]) for n in init)  # step 0: LR 0 ...
    kept = [int((s["embed.weight"] != 0).sum()) for s in ours]
    assert kept[-1] == int(L0 * 32 / 256 * 32 * 32)  # ... and the ratio d_model / 256 at the end
    assert kept[2] < 1024  # the embedding thins out from the start of the anneal
    # The positional table: zeros at first, then trained in the rows the context reads ...
    assert not init["pos_embed.weight"].any()
    pos = ours[-1]["pos_embed.weight"]  # [POS_ROWS, d_model]
    assert not any(s["pos_embed.weight"][N_CTX:].any() for s in ours)  # ... and only there,
    # kept at the block L0 over all POS_ROWS rows (not over the N_CTX rows that train).
    assert int((pos != 0).sum()) == int(L0 * POS_ROWS * 32) < N_CTX * 32


@pytest.mark.parametrize(
    "default",
    [
        {"embed_schedule": "ratio"},
        {"embed_mult": 4.0},
        {"kept_rounding": "round"},
        {"anneal_clock": "after_step"},
        {"warmup_clock": "after_step"},
        {"pos_density": "embedding"},
    ],
)
def test_each_default_departs_from_the_official_step(default: dict) -> None:
    """Each option is needed: with any one at sparse_tf's default the steps differ."""
    optim, sparsity = official_configs()
    if "warmup_clock" in default:
        optim = dataclasses.replace(optim, **default)
    else:
        sparsity = dataclasses.replace(sparsity, **default)
    _, ours, theirs = run(optim, sparsity)
    assert any(
        not torch.allclose(a[n], b[n], rtol=1e-5, atol=1e-7)
        for a, b in zip(ours, theirs, strict=True)
        for n in a
    )


def test_the_eot_bigram_row_can_stay_untrained() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, n_ctx=8, n_layer=1, d_model=32))
    start = model.bigram.detach().clone()
    toks = torch.randint(0, 32, (4, 8))
    toks[:, ::2] = 5  # the end-of-text token appears in the inputs
    optim = OptimConfig(train_eot_bigram=False, warmup_frac=0.0)
    opt = SparseOptimizer(model, optim, SparsityConfig(l0=0.5), total_steps=3, eot_id=5)
    for _ in range(3):
        F.cross_entropy(model(toks)[:, :-1].reshape(-1, 32), toks[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(model.bigram[5], start[5])
    assert not torch.equal(model.bigram[toks[0, 1]], start[toks[0, 1]])
    with pytest.raises(ValueError, match="needs eot_id"):
        SparseOptimizer(model, optim, None, total_steps=3)


def test_paper_official_is_paper_d1024_but_for_the_step() -> None:
    official, paper = preset("paper-official"), preset("paper-d1024")
    assert (
        dataclasses.replace(official, model=paper.model, sparsity=paper.sparsity, optim=paper.optim)
        == paper
    )
    ours = {"embed_mult": 4.0, "embed_schedule": "ratio", "kept_rounding": "round",
            "anneal_clock": "after_step", "pos_density": "embedding"}  # fmt: skip
    assert dataclasses.replace(official.sparsity, **ours) == paper.sparsity
    assert dataclasses.replace(official.optim, warmup_clock="after_step") == paper.optim
    # train.py's wpe: block_size = 1024 rows at n_ctx 256, zeroed (then trained)
    table = {"pos_emb": True, "pos_rows": 1024, "pos_init": "zeros"}
    assert dataclasses.replace(paper.model, **table) == official.model
