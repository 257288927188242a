"""Kernels against their pure-torch references: identical outputs, kept sets and gradients.

Without a GPU the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on small shapes; on a GPU the same tests run on CUDA, and the `gpu` tests
add realistic shapes in bf16.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_tf import kernels, lm_loss
from sparse_tf.kernels import (
    KernelError,
    abs_topk_backend,
    abstopk,
    gelu_abstopk,
    norm_abstopk,
    projection,
)
from sparse_tf.kernels.abstopk import MAX_WIDTH
from sparse_tf.kernels.projection import Protect
from sparse_tf.kernels.rule import topk_mask
from tests.helpers import tiny_model, tokens

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def hard_rows(rows: int, width: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows with what breaks top-k selections: runs of zeros, exact ties (small integers, both
    signs), an all-zero row, and ordinary values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    kind = torch.randint(0, 4, (rows,), generator=g)
    ties = torch.randint(-3, 4, (rows, width), generator=g).float()
    x = torch.where((kind == 1)[:, None], ties, x)
    x = torch.where((kind == 2)[:, None] & (torch.rand(rows, width, generator=g) < 0.7), 0.0, x)
    x = torch.where((kind == 3)[:, None], 0.0, x)  # empty row
    return x.to(dtype)


def assert_column_sums(gb: torch.Tensor | None, g: torch.Tensor) -> None:
    """gb [n] (fp32) is the column sums of g [..., n], as `abstopk.BiasSink` computes them, to
    fp32 rounding in another summation order."""
    assert gb is not None
    assert gb.dtype == torch.float32
    bias = torch.zeros(g.shape[-1], device=g.device, requires_grad=True)
    abstopk.bias_sink(torch.zeros_like(g, requires_grad=True), bias).backward(g)
    rows = g.reshape(-1, g.shape[-1]).double()
    tolerance = 1e-6 * rows.abs().sum(dim=0).max().item() + 1e-30
    torch.testing.assert_close(gb, bias.grad, rtol=0, atol=tolerance)


def check_abs_topk(x: torch.Tensor, k: int) -> None:
    """Both searches of the forward kernel, its kept bits and the backward, and the mask kernel
    against the reference."""
    x = x.to(DEVICE)
    expected = abstopk.reference_forward(x, k)
    kept = topk_mask(x.abs(), k)
    grad = torch.randn(x.shape, device=DEVICE).to(x.dtype)
    for search in ("guided", "bits"):
        (y,), bits = abstopk.forward(x, k, search=search)
        assert torch.equal(y, expected), search
        gx, no_bias = abstopk.backward(bits, [grad], x.shape)
        assert no_bias is None
        assert torch.equal(gx, abstopk.reference_backward(expected, grad, k)), search
    # With the bias's gradient: the same gx, and its column sums (rows summed BIAS_ROWS at a
    # time, then the blocks), against the reference's BiasSink.
    gx_b, gb = abstopk.backward(bits, [grad], x.shape, want_bias=True)
    assert torch.equal(gx_b, gx)
    assert_column_sums(gb, gx)
    # The reference backward's kept set, recovered from y, is the forward's; the mask agrees.
    assert torch.equal(abstopk.reference_kept(expected, k), kept)
    assert torch.equal(abstopk.mask(x, k), kept)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(0, 5),
    width=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_abs_topk_kernel_matches_reference(
    dtype: torch.dtype, rows: int, width: int, k_frac: float, seed: int
) -> None:
    k = max(1, min(width, round(k_frac * width)))
    check_abs_topk(hard_rows(rows, width, dtype, seed), k)


@pytest.mark.interpreter
@pytest.mark.parametrize("k", [1, 2, 4, 8, 9])  # both sides of SMALL_K
def test_abs_topk_kernel_small_k(k: int) -> None:
    for dtype in DTYPES:
        check_abs_topk(hard_rows(8, 40, dtype, k), k)


@pytest.mark.interpreter
@pytest.mark.parametrize("k", [9, 525, 2099])
def test_abs_topk_kernel_on_rows_wide_enough_for_paired_guided_counts(k: int) -> None:
    """From PAIRED_FROM_WIDTH wide, the guided search counts bf16 keys in pairs. The last row
    has two zeros among normal values: at k = width - 1 its search ends on a peel at key 0,
    which a pair count cannot make (it counts keys >= 1; at 0 the count is every key)."""
    width = int(abstopk.PAIRED_FROM_WIDTH) + 52
    few_zeros = torch.randn(1, width).index_fill_(1, torch.tensor([7, 1500]), 0.0)
    x = torch.cat([hard_rows(4, width, torch.float32, k), few_zeros]).to(torch.bfloat16)
    check_abs_topk(x, k)


@pytest.mark.interpreter
def test_abs_topk_kernel_keeps_the_first_ties_at_every_cut() -> None:
    """Row r: r entries above the rest (at scattered places), every other entry tied, k = 64:
    the kept ties are the first 64 - r by index, so the cut falls on every bit of the packed
    words (0 and 31 included) and in every word of the row."""
    width, k = 128, 64
    g = torch.Generator().manual_seed(5)
    x = torch.ones(k, width)
    for r in range(k):
        x[r, torch.randperm(width, generator=g)[:r]] = -2.0
    for dtype in (torch.float32, torch.bfloat16):
        check_abs_topk(x.to(dtype), k)


@pytest.mark.interpreter
def test_abstopk_ablation_s_exact_variants_match_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`benchmarks/abstopk_ablation.py` times its exact variants (the two searches, paired
    counts forced on, ties ranked by a search, several rows per program) as the kernel they
    stand for: each must keep the reference's set, ties and empty rows included."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import abstopk_ablation as ablation

    for dtype, width in ((torch.bfloat16, 70), (torch.float32, 40), (torch.bfloat16, 64)):
        x = hard_rows(9, width, dtype, width).to(DEVICE)
        for k in (5, width // 4, width - 1):
            expected = abstopk.reference_forward(x, k)
            for variant in ablation.EXACT:
                if ablation.VARIANTS[variant]["PAIRED"] and dtype != torch.bfloat16:
                    continue
                assert torch.equal(ablation.run_variant(x, k, variant, 1), expected), variant
            for rows in (2, 4):
                assert torch.equal(ablation.run_rows(x, k, rows, 1), expected), rows


@pytest.mark.interpreter
def test_abs_topk_kernel_on_batched_non_contiguous_input() -> None:
    x = hard_rows(24, 96, torch.float32, 1).view(2, 3, 4, 96).transpose(1, 2)  # [2, 4, 3, 96]
    check_abs_topk(x, 24)
    assert kernels.abs_topk(x.to(DEVICE), 24).shape == x.shape


@pytest.mark.interpreter
def test_abs_topk_autograd_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    x = hard_rows(6, 64, torch.float32, 2).to(DEVICE).requires_grad_()
    assert abs_topk_backend(x) == "triton"
    w = torch.randn(64, device=DEVICE)
    (kernels.abs_topk(x, 16) * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    (kernels.abs_topk(x_ref, 16) * w).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.interpreter
def test_model_forward_is_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits equal to rounding, with the norms fused or kept apart by hooks on the normalized
    stream: the fused norm sums 1/rms in another order, and the fused GELU's erf is not the
    one torch calls (libdevice's on a GPU, Python's under the interpreter), so the last bit of
    a hidden activation may differ."""
    model = tiny_model().to(DEVICE)
    x = tokens(model.cfg, batch=1, seq=6).to(DEVICE)
    norms = [
        (f"blocks.{i}.ln{j}.hook_normalized", lambda t, hook: t) for i in (0, 1) for j in (1, 2)
    ]
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        with torch.no_grad():
            out[backend] = (model(x), model.run_with_hooks(x, fwd_hooks=norms))
    (ref_fused, ref_unfused), (fused, unfused) = out.values()
    torch.testing.assert_close(unfused, ref_unfused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, ref_fused, rtol=1e-5, atol=1e-6)


@pytest.mark.interpreter
def test_model_gradients_are_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward through every AbsTopK site (the norms fused with AbsTopK, q, k
    and v in one launch, kept sets as bit masks, GELU's backward fused with AbsTopK's) give
    the reference's logits and gradients to rounding; an in-place edit of q by a hook reaches
    the model on both."""
    model = tiny_model().to(DEVICE)
    x = tokens(model.cfg, batch=2, seq=6).to(DEVICE)
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        model.zero_grad()
        logits = model(x)
        lm_loss(logits, x).backward()
        with torch.no_grad():
            edited = model.run_with_hooks(
                x, fwd_hooks=[("blocks.0.attn.hook_q", lambda t, hook: t.mul_(-2.0))]
            )
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (logits.detach(), edited, grads)
    (ref_logits, ref_edited, ref_grads), (logits, edited, grads) = results.values()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(edited, ref_edited, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(edited, logits)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def gelu_like_the_kernel(h: torch.Tensor) -> torch.Tensor:
    """GELU(h) as the fused kernel computes it, to compare with: on a GPU F.gelu (torch's
    formula; its erf is compiled apart from libdevice's, so up to 2 fp32 ulps apart); under
    the Triton interpreter exactly: the same formula in fp32 with Python's erf (the
    interpreter's) and its bf16 truncation."""
    if h.is_cuda:
        return F.gelu(h)
    x = h.float()
    erf = np.vectorize(math.erf, otypes=[np.float32])((x * 0.7071067811865476).numpy())
    return cast_like_the_kernel((x * 0.5) * (1.0 + torch.from_numpy(erf)), h.dtype)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_abs_topk_matches_the_reference(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused path computes GELU in the selection's pass: it keeps exactly the entries the
    reference rule keeps of the GELU values it computed, those values are torch's formula
    (`gelu_like_the_kernel`), and its fused backward agrees with torch's GELU backward to
    rounding."""
    h = (3 * hard_rows(9, 200, torch.float32, 5)).to(dtype).to(DEVICE).requires_grad_()
    grad = torch.randn(9, 200, device=DEVICE).to(dtype)
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        y = kernels.gelu_abs_topk(h, 50)
        (gh,) = torch.autograd.grad(y, h, grad)
        out[backend] = (y, gh)
    (values,), _ = abstopk.forward(h.detach(), h.shape[-1], gelu=True)  # every GELU value
    assert torch.equal(out["triton"][0], abstopk.reference_forward(values, 50))
    # rtol: 2 fp32 ulps, or one unit of the output dtype where they flip its rounding. atol:
    # below x = -4, 1 + erf(x · √½) cancels, and one ulp of erf is the whole GELU value (|GELU| <
    # 1e-6, far below any row's threshold).
    rtol = max(2.5e-7, torch.finfo(dtype).eps)
    torch.testing.assert_close(
        values.float(), gelu_like_the_kernel(h.detach()).float(), rtol=rtol, atol=1e-6
    )
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(out["triton"][1], out["reference"][1], **tol)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_abs_topk_matches_the_reference(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r + AbsTopK(x) in one pass: the same sum as torch's addition, and the same gradients
    (r's unchanged, x's masked and cast). The interpreter casts fp32 to bf16 by truncation
    (the GPU rounds, as torch does): there x's bf16 gradient may differ by one unit."""
    r = torch.randn(7, 96, device=DEVICE).requires_grad_()  # the fp32 residual stream
    x = hard_rows(7, 96, dtype, 11).to(DEVICE).requires_grad_()
    grad = torch.randn(7, 96, device=DEVICE)
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        y = kernels.residual_abs_topk(r, x, 24)
        out[backend] = (y, *torch.autograd.grad(y, [r, x], grad))
    for i, (got, expected) in enumerate(zip(out["triton"], out["reference"], strict=True)):
        assert got.dtype == expected.dtype
        if i == 2 and dtype == torch.bfloat16 and not got.is_cuda:
            torch.testing.assert_close(got, expected, rtol=2**-7, atol=0)
        else:
            assert torch.equal(got, expected)


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("site", ["qkv", "gelu", "write"])
def test_a_bias_gradient_computed_by_abstopk_is_the_linear_s_own(
    site: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A product whose bias gradient is cut (`F.linear(a, w, b.detach())`) and the AbsTopK
    after it handed `b`: every gradient (a, w, b, the residual's) is the plain linear's, for
    each AbsTopK that takes a bias (q/k/v in one launch, GELU, a residual write), with rows
    that do not fill the kernel's last row block; fp32, so that only the summation order
    differs. The kernels' own column sums: `assert_column_sums`."""
    monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
    g = torch.Generator().manual_seed(3)
    rows, d_in, d_out = abstopk.BIAS_ROWS + 5, 24, 96
    a = torch.randn(rows, d_in, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(d_out, d_in, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(d_out, generator=g).to(DEVICE).requires_grad_()
    r = torch.randn(rows, d_out, generator=g).to(DEVICE).requires_grad_()
    upstream = [torch.randn(rows, d_out // (3 if site == "qkv" else 1), generator=g).to(DEVICE)]
    upstream *= 3 if site == "qkv" else 1

    def run(bias_elsewhere: bool) -> list[torch.Tensor]:
        x = F.linear(a, w, b.detach() if bias_elsewhere else b)
        bias = b if bias_elsewhere else None
        if site == "qkv":
            out: tuple[torch.Tensor, ...] = kernels.abs_topk_split(x, 8, 3, bias)
        elif site == "gelu":
            out = (kernels.gelu_abs_topk(x, 24, bias),)
        else:
            out = (kernels.residual_abs_topk(r, x, 24, bias),)
        return list(torch.autograd.grad(out, [a, w, b, r], upstream, allow_unused=True))

    for got, plain in zip(run(True), run(False), strict=True):
        if plain is None:  # r, outside the write
            assert got is None
        else:
            torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
def test_abstopk_backward_kernels_sum_columns_across_row_blocks() -> None:
    """The backward kernels' column sums (`want_bias`), from rows in several row blocks, the
    last one partial, for q/k/v in one launch and for GELU: their gradients' column sums."""
    g = torch.Generator().manual_seed(5)
    rows = 2 * abstopk.BIAS_ROWS + 3
    x = torch.randn(rows, 3 * 40, generator=g).to(DEVICE)
    ys, bits = abstopk.forward(x, 10, parts=3)
    grads = [torch.randn(y.shape, generator=g).to(DEVICE) for y in ys]
    gx, gb = abstopk.backward(bits, grads, x.shape, want_bias=True)
    assert_column_sums(gb, gx)
    (_,), bits = abstopk.forward(x, 30, gelu=True)
    grad = torch.randn(x.shape, generator=g).to(DEVICE)
    gh, gb = gelu_abstopk.backward(bits, grad, x, want_bias=True)
    assert torch.equal(gh, gelu_abstopk.backward(bits, grad, x)[0])
    assert_column_sums(gb, gh)


def cast_like_the_kernel(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t cast to dtype as a kernel casts it: rounding on a GPU (as torch), truncation to bf16
    under the Triton interpreter (which ignores the rounding mode)."""
    if dtype == torch.bfloat16 and not t.is_cuda and t.dtype == torch.float32:
        return (t.view(torch.int32) & -65536).view(torch.float32).to(dtype)  # exact
    return t.to(dtype)


def check_norm_abs_topk(x: torch.Tensor, k: int, out_dtype: torch.dtype, seed: int = 0) -> None:
    """The fused RMSNorm + AbsTopK against its references: its output and kept bits exactly
    those of the values it normalized (`reference_with_rstd`), its 1/rms and gradients torch's
    to rounding."""
    g = torch.Generator().manual_seed(seed)
    x = x.to(DEVICE).requires_grad_()
    weight = (1 + 0.5 * torch.randn(x.shape[-1], generator=g)).to(DEVICE, x.dtype)
    weight.requires_grad_()
    y, bits, rstd = norm_abstopk.forward(x.detach(), weight.detach(), k, out_dtype)
    cast = cast_like_the_kernel
    kept_values = norm_abstopk.reference_with_rstd(x.detach(), weight.detach(), rstd, k, cast)
    assert torch.equal(y, cast(kept_values.float(), out_dtype))
    unpacked = (bits[..., None] >> torch.arange(32, device=DEVICE)) & 1  # [rows, words, 32]
    kept = unpacked.flatten(-2)[..., : x.shape[-1]].bool()
    assert torch.equal(kept, abstopk.reference_kept(kept_values, k).view(kept.shape))
    # 1/rms to the rounding of a sum of squares in another order (up to width · 2^-24).
    ms = x.detach().float().pow(2).mean(-1)
    torch.testing.assert_close(rstd, torch.rsqrt(ms + norm_abstopk.norm_eps(x)), rtol=2e-5, atol=0)
    # Gradients: torch's RMSNorm backward through the kept set the forward chose.
    grad = torch.randn(x.shape, generator=g).to(DEVICE, out_dtype)
    got = torch.autograd.grad(
        norm_abstopk.NormAbsTopKFunction.apply(x, weight, k, out_dtype), [x, weight], grad
    )
    normalized = F.rms_norm(x, (x.shape[-1],), weight, norm_abstopk.norm_eps(x))
    want = torch.autograd.grad(normalized * kept.view(x.shape), [x, weight], grad.to(x.dtype))
    for gx, wx in zip(got, want, strict=True):
        assert gx.dtype == wx.dtype
        # The gain's gradient sums over every row, in another order than torch's: its rounding
        # grows with its largest entry, so the absolute tolerance does too.
        scale = max(1.0, wx.abs().max().item()) if wx.numel() else 1.0
        rtol, atol = (1e-4, 1e-5) if x.dtype == torch.float32 else (2e-2, 2e-2)
        torch.testing.assert_close(gx.float(), wx.float(), rtol=rtol, atol=atol * scale)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
     (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)],
)  # fmt: skip
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 5), width=st.integers(2, 300), k_frac=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_norm_abs_topk_matches_the_reference(
    dtype: torch.dtype, out_dtype: torch.dtype, rows: int, width: int, k_frac: float, seed: int
) -> None:
    """Rows with ties, runs of zeros and all-zero rows; under autocast the output is bf16."""
    k = min(width - 1, max(1, int(k_frac * width)))
    check_norm_abs_topk(hard_rows(rows, width, torch.float32, seed).to(dtype), k, out_dtype, seed)


@pytest.mark.interpreter
@pytest.mark.parametrize("rows", [0, 1, 3, 7])
def test_norm_abs_topk_backward_writes_every_partial_it_sums(
    monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """The backward's partial sums of the gain's gradient are allocated uninitialised: with
    torch filling uninitialised memory with NaN (deterministic mode), a partial that no
    program wrote would show as NaN in the gain's gradient. No rows: a zero gradient. At most
    3 programs here, so that 7 rows take a program over several rows, as at scale."""
    monkeypatch.setattr(norm_abstopk, "BWD_PROGRAMS", 3)
    width, k = 40, 7
    x = hard_rows(rows, width, torch.float32, rows).to(DEVICE)
    weight = 1.0 + 0.1 * torch.randn(width, device=DEVICE)
    y, bits, rstd = norm_abstopk.forward(x, weight, k, torch.float32)
    grad = torch.randn_like(y)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory  # torch's default
        dx, dw = norm_abstopk.backward(bits, grad, x, weight, rstd)
    finally:
        torch.use_deterministic_algorithms(before)
    x_hat = x * rstd.unsqueeze(-1)  # [rows, width]
    kept = y != 0
    expected = (grad * kept * x_hat).sum(0)  # [width]
    torch.testing.assert_close(dw, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(dx).all()


@pytest.mark.interpreter
def test_fp32_rows_of_nearly_equal_magnitudes() -> None:
    """fp32 rows whose magnitudes differ only in their low mantissa bits (one bf16 value):
    both searches and the fused norm still find the exact kept set, around the guided
    search's PEEL too."""
    width = 200
    base = 1.0 + torch.arange(width, dtype=torch.float32) * 2**-22  # one bf16 value, 200 keys
    x = torch.stack([base[torch.randperm(width)] * s for s in (1.0, -1.0, 3.0)])
    for k in (1, 3, abstopk.PEEL + 1, 50, 199):
        check_abs_topk(x, k)
        check_norm_abs_topk(x, k, torch.float32)


@pytest.mark.interpreter
def test_model_runs_the_norms_fused_unless_hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block reads each sublayer's input through the fused norm, and through RMSNorm and
    AbsTopK separately while a hook reads the normalized stream or the input."""
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    model = tiny_model().to(DEVICE)
    x = tokens(model.cfg, batch=1, seq=6).to(DEVICE)
    calls = []
    real = norm_abstopk.NormAbsTopKFunction.apply
    monkeypatch.setattr(
        norm_abstopk.NormAbsTopKFunction, "apply", lambda *a: calls.append(1) or real(*a)
    )
    model(x)
    assert len(calls) == 2 * model.cfg.n_layer
    calls.clear()
    model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_in", lambda t, hook: t)])
    assert len(calls) == 2 * model.cfg.n_layer - 1


@pytest.mark.gpu
def test_norm_abs_topk_at_the_paper_shape() -> None:
    """The residual stream of paper-d1024 (16k tokens, fp32) read into bf16, and bf16 rows."""
    x = torch.randn(16384, 1024) * torch.rand(16384, 1) * 4
    check_norm_abs_topk(x, 256, torch.bfloat16)
    check_norm_abs_topk(x.to(torch.bfloat16), 256, torch.bfloat16)


@pytest.mark.gpu
def test_gelu_abs_topk_at_the_mlp_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    h = torch.randn(16384, 4096, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(16384, 4096, device=DEVICE, dtype=torch.bfloat16)
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        y = kernels.gelu_abs_topk(h, 1024)
        out[backend] = (y, *torch.autograd.grad(y, h, grad))
    assert torch.equal(out["triton"][0], out["reference"][0])
    diff = (out["triton"][1].float() - out["reference"][1].float()).norm()
    assert diff / out["reference"][1].float().norm() < 1e-2


@pytest.mark.interpreter
def test_abs_topk_saves_one_bit_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel path keeps for the backward: the kept set as bits, not the output."""
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    x = torch.randn(8, 3 * 64, device=DEVICE, requires_grad=True)
    for parts in (1, 3):
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor, saved: list[torch.Tensor] = saved) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            kernels.abs_topk_split(x, 16, parts)
        assert [t.dtype for t in saved] == [torch.int32]
        assert saved[0].numel() * 32 == x.numel()  # one bit per entry


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 8)
    monkeypatch.delenv("SPARSE_TF_KERNELS", raising=False)
    assert abs_topk_backend(x) == "reference"  # CPU tensors use the reference by default
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    assert abs_topk_backend(x.to(DEVICE)) == "reference"
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    with pytest.raises(KernelError, match=r"cannot run on a torch\.int64 tensor"):
        abs_topk_backend(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(KernelError, match=f"width <= {MAX_WIDTH}"):
        abs_topk_backend(torch.zeros(1, MAX_WIDTH + 1))
    monkeypatch.setenv("SPARSE_TF_KERNELS", "fast")
    with pytest.raises(KernelError, match="expected auto, triton or reference"):
        abs_topk_backend(x)


def test_kept_set_recovered_from_the_output() -> None:
    x = torch.tensor([[0.0, 3.0, 0.0, -1.0, 0.0], [2.0, -2.0, 2.0, 0.0, 1.0]])
    y = abstopk.reference_forward(x, 3)
    # Row 0 has 2 nonzeros: both kept, plus the first zero. Row 1: the three 2s (ties by index).
    assert abstopk.reference_kept(y, 3).tolist() == [
        [True, True, False, True, False],
        [True, True, True, False, False],
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "width"), [(65536, 1024), (16384, 4096), (4096, 8192)])
def test_abs_topk_kernel_at_model_shapes(dtype: torch.dtype, rows: int, width: int) -> None:
    check_abs_topk(hard_rows(rows, width, dtype, 3), width // 4)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 5), width=st.integers(1, 200), k=st.integers(0, 210))
def test_abs_topk_mask_kernel_matches_reference(
    dtype: torch.dtype, rows: int, width: int, k: int
) -> None:
    x = hard_rows(rows, width, dtype, seed=rows * 1000 + width).to(DEVICE)
    expected = topk_mask(x.abs(), k)
    if 0 < k < width:
        assert torch.equal(abstopk.mask(x, k), expected)
    assert torch.equal(kernels.abs_topk_mask(x, k), expected)


@pytest.mark.interpreter
def test_projection_is_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_tf import SparsityConfig, project_weights_

    small = {"d_model": 16, "vocab_size": 32, "n_layer": 1}
    model = tiny_model(**small).to(DEVICE)
    with torch.no_grad():  # ties inside neurons: the protection must break them by index
        model.blocks[0].mlp.out_proj.weight[:, :8] = 0.5
    cfg = SparsityConfig(l0=1 / 16)
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        copy = tiny_model(**small).to(DEVICE)
        copy.load_state_dict(model.state_dict())
        project_weights_(copy, 1 / 16, cfg)
        results[backend] = copy.state_dict()
    for name, value in results["reference"].items():
        assert torch.equal(results["triton"][name], value), name


def random_protection(rows: int, cols: int, i: int, g: torch.Generator) -> projection.Protection:
    """Every kind of protection: none, rows or columns by rule (j = 1..9: both sides of the
    fused kernel's limit, and j >= the neuron's length), and masks (some transposed views)."""
    kind = i % 4
    if kind == 0:
        return None
    if kind in (1, 2):
        return Protect(dim=kind - 1, j=int(torch.randint(1, 10, (), generator=g)))
    p = torch.rand(rows, cols, generator=g) < 0.1
    return p.T.contiguous().T if i % 8 == 7 else p


@pytest.mark.interpreter
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=5),
    k_fracs=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_projection_kernels_match_the_reference(
    shapes: list[tuple[int, int]], k_fracs: list[float], seed: int
) -> None:
    """Cold and warm-started selections (the same matrices, then moved a little: the second
    call searches inside the first one's window) keep exactly the reference's entries."""
    g = torch.Generator().manual_seed(seed)
    weights, protections, ks = [], [], []
    for i, (rows, cols) in enumerate(shapes):
        weights.append(hard_rows(rows, cols, torch.float32, seed + i).to(DEVICE))  # ties, zeros
        p = random_protection(rows, cols, i + seed, g)
        protections.append(p.to(DEVICE) if isinstance(p, torch.Tensor) else p)
        ks.append(max(1, min(rows * cols, round(k_fracs[i] * rows * cols))))
    for step in range(2):  # each step selects twice: the second call searches a window
        if step:
            weights = [
                w * (1 + 1e-4 * torch.randn(w.shape, generator=g).to(DEVICE)) for w in weights
            ]
        # Small chunks: matrices span several programs, and ties straddle chunk boundaries.
        masks = projection.topk_masks(weights, protections, ks, chunk=64)
        projected = [w.clone() for w in weights]
        projection.project_(projected, protections, ks, chunk=64)
        expected = projection.reference_masks(weights, protections, ks)
        for w, mask, after, ref in zip(weights, masks, projected, expected, strict=True):
            assert torch.equal(mask, ref), step
            assert torch.equal(after, w.masked_fill(~ref, 0.0)), step


@pytest.mark.interpreter
def test_protected_keys_take_each_neurons_maxima_lowest_index_first() -> None:
    """The fused protected-keys kernel: the j largest |w| of every row or column get the key of
    +inf, ties to the lower index along the neuron (runs of equal values, zeros, empty neurons,
    both signs), every other entry the bit pattern of |w|."""
    cases = [((24, 40), 0, 4), ((30, 33), 1, 3), ((7, 50), 0, 1), ((50, 9), 1, 8), ((5, 17), 0, 8)]
    for i, ((rows, cols), dim, j) in enumerate(cases):
        w = hard_rows(rows, cols, torch.float32, i).to(DEVICE)
        rule = Protect(dim, j)
        assert j <= abstopk.SMALL_K  # the fused kernel's case
        assert j < w.shape[1 - dim]
        keys = torch.full((rows * cols,), -7, dtype=torch.int32, device=DEVICE)
        projection._write_keys(w, rule, keys, 0, None)
        protected = projection.reference_protected(w, rule)
        assert protected is not None
        expected = w.abs().view(torch.int32).masked_fill(protected, 0x7F800000)
        assert torch.equal(keys.view(rows, cols), expected), i


@pytest.mark.interpreter
def test_projection_zeroes_matrices_of_several_dtypes_in_one_call() -> None:
    """`project_` zeroes the dropped entries of every matrix in one launch per dtype, each
    matrix found by its address: fp32 and bf16 interleaved, and a view 7 entries into a larger
    buffer, whose entries outside the view stay as they were. Kept entries are untouched."""
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(7 + 40 * 30 + 5, generator=g).to(DEVICE)
    weights = [
        torch.randn(24, 40, generator=g).to(DEVICE),
        torch.randn(30, 33, generator=g).to(torch.bfloat16).to(DEVICE),
        buffer[7 : 7 + 40 * 30].view(40, 30),
        hard_rows(20, 50, torch.bfloat16, 1).to(DEVICE),
    ]
    protections = [Protect(0, 2), None, Protect(1, 3), None]
    ks = [100, 200, 300, 150]
    before = [w.clone() for w in weights]
    outside = torch.cat([buffer[:7], buffer[-5:]]).clone()
    expected = projection.reference_masks(before, protections, ks)
    projection.project_(weights, protections, ks, chunk=64)  # in place, the view included
    for i, (w, after, ref) in enumerate(zip(before, weights, expected, strict=True)):
        assert torch.equal(after, w.masked_fill(~ref, 0.0)), i
    assert torch.equal(torch.cat([buffer[:7], buffer[-5:]]), outside)


@pytest.mark.interpreter
def test_projection_warm_start_searches_the_window_and_falls_back() -> None:
    """The second selection of unchanged matrices finds every threshold inside its window (the
    candidates alone are searched); after a jump it falls back to all keys; both are exact."""
    g = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(48, 40, generator=g).to(DEVICE),
        torch.randn(30, 64, generator=g).to(DEVICE),
    ]
    weights[1][:, :20] = 0.25  # a long run of equal keys at the threshold
    protections = [Protect(0, 4), Protect(1, 4)]
    ks = [200, 700]
    modes = []
    for scale in (1.0, 1.0, 3.0, 3.0):
        scaled = [w * scale for w in weights]
        sel = projection._select(scaled, protections, ks, chunk=64)
        modes.append(sel.mode.tolist())
        masks = projection.topk_masks(scaled, protections, ks, chunk=64)
        expected = projection.reference_masks(scaled, protections, ks)
        assert all(torch.equal(m, e) for m, e in zip(masks, expected, strict=True))
    # Cold (no previous threshold), warm, the threshold tripled (outside: cold), warm again.
    assert modes[0] == [0, 0]
    assert modes[1] == [1, 1]
    assert modes[2] == [0, 0]
    assert modes[3] == [1, 1]


@pytest.mark.interpreter
@pytest.mark.parametrize("programs", [1, 3])
def test_projection_passes_walk_only_their_matrices_chunks(
    monkeypatch: pytest.MonkeyPatch, programs: int
) -> None:
    """The persistent passes with fewer programs than chunks (each program walks several, across
    matrices) and matrices in both modes at once: one searched on its candidates, one fallen
    back to all keys, one cold (new), all in the same launches. Every kept set is exact."""
    monkeypatch.setattr(projection, "_PASS_PROGRAMS", programs)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(r, c, generator=g).to(DEVICE) for r, c in ((24, 40), (30, 32), (9, 50))]
    weights[1][:, :12] = 0.5  # a run of equal keys: ties at the threshold across chunks
    protections = [Protect(0, 2), None, Protect(1, 3)]
    ks = [150, 500, 200]
    projection._LAYOUTS.clear()  # the first selection below is cold
    for step, scales in enumerate(((1.0, 1.0, 1.0), (1.0, 4.0, 1.0))):
        scaled = [w * s for w, s in zip(weights, scales, strict=True)]
        sel = projection._select(scaled, protections, ks, chunk=64)
        masks = projection.topk_masks(scaled, protections, ks, chunk=64)
        expected = projection.reference_masks(scaled, protections, ks)
        for i, (mask, ref) in enumerate(zip(masks, expected, strict=True)):
            assert torch.equal(mask, ref), (step, i)
        # The first selection is cold; then the unchanged matrices are searched on their
        # candidates and the one scaled 4x falls back.
        assert sel.mode.tolist() == ([0, 0, 0] if step == 0 else [1, 0, 1])


@pytest.mark.gpu
def test_projection_kernels_at_paper_shapes() -> None:
    shapes = [(2048, 1024), (3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
    weights = [hard_rows(r, c, torch.float32, i).to(DEVICE) for i, (r, c) in enumerate(shapes)]
    protections = [None, Protect(0, 4), Protect(1, 4), Protect(0, 4), Protect(1, 4)]
    ks = [w.numel() // 64 for w in weights]
    for step in range(3):  # cold, then warm (the weights drift a little)
        weights = [w * (1 + 1e-3 * step * torch.randn_like(w)) for w in weights]
        masks = projection.topk_masks(weights, protections, ks)
        expected = projection.reference_masks(weights, protections, ks)
        for mask, ref in zip(masks, expected, strict=True):
            assert torch.equal(mask, ref), step


@pytest.mark.gpu
def test_graphed_projection_equals_eager_and_reference_through_an_anneal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA-graph replay of the projection (K changing every step, as during the L0 anneal;
    a second model forcing a recapture) keeps exactly the reference's entries."""
    from sparse_tf import GPT, GPTConfig, SparsityConfig, project_weights_
    from sparse_tf.kernels import graphs

    cfg = GPTConfig(vocab_size=2048, n_ctx=64, n_layer=2, d_model=256)
    sparsity = SparsityConfig(l0=1 / 64)
    for seed in (0, 1):  # a second model: new tensors (recapture) or reused addresses
        torch.manual_seed(seed)
        start = GPT(cfg).state_dict()
        results = {}
        for mode, env in (
            ("graph", ("auto", "1")),
            ("eager", ("auto", "0")),
            ("ref", ("reference", "1")),
        ):
            monkeypatch.setenv("SPARSE_TF_KERNELS", env[0])
            monkeypatch.setenv("SPARSE_TF_CUDA_GRAPHS", env[1])
            model = GPT(cfg).to(DEVICE)
            model.load_state_dict(start)
            torch.manual_seed(100 + seed)  # the same "Adam steps" in every mode
            states = []
            for l0 in (0.5, 0.25, 0.1, 1 / 64, 1 / 64):
                with torch.no_grad():  # an "Adam step": perturb, so every projection has work
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 1e-3 * (p != 0))
                project_weights_(model, l0, sparsity)
                states.append({n: (p != 0).cpu() for n, p in model.named_parameters()})
            results[mode] = states
        assert any(key[0] == "projection" for key in graphs._GRAPHS)
        for step, ref in enumerate(results["ref"]):
            for name, mask in ref.items():
                assert torch.equal(results["graph"][step][name], mask), (seed, step, name)
                assert torch.equal(results["eager"][step][name], mask), (seed, step, name)
    graphs.clear()


def test_graph_cache_keeps_one_capture_per_tensor_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture cache's policy (CPU: the capture itself is replaced by a stand-in; the gpu
    test above runs real captures). Alternating models replay their own capture; beyond
    MAX_GRAPHS sets of tensors the least recently used capture goes."""
    from sparse_tf.kernels import graphs

    captures: list[object] = []
    replays: list[int] = []

    class Replayed:
        def replay(self) -> None:
            replays.append(1)

    def capture(key: object, fn: object, ints: list[int], device: torch.device) -> object:
        captures.append(key)
        return graphs._Graph(key, Replayed(), torch.tensor(ints, dtype=torch.int32), ints)  # type: ignore[arg-type]

    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setenv("SPARSE_TF_CUDA_GRAPHS", "1")
    graphs.clear()
    models = [[torch.zeros(3), torch.zeros(2, 2)] for _ in range(graphs.MAX_GRAPHS + 1)]

    def step(model: list[torch.Tensor], static: object = None) -> None:
        graphs.graphed("projection", lambda k: None, [1, 2], model, static)

    for _ in range(3):
        step(models[0])
        step(models[1])
    assert len(captures) == 2
    assert len(replays) == 6
    n = graphs.MAX_GRAPHS
    for model in models:  # n - 1 new tensor sets: the last evicts models[0], the oldest
        step(model)
    assert len(captures) == n + 1
    assert len(graphs._GRAPHS) == n
    step(models[1])  # still kept
    assert len(captures) == n + 1
    step(models[0])  # evicted: captured again
    assert len(captures) == n + 2
    step(models[0], static=(4, (0, 1)))  # other protection settings: another capture
    assert len(captures) == n + 3
    graphs.clear()


@pytest.mark.slow
def test_every_kernel_compiles_for_hopper() -> None:
    """ptxas compiles every kernel for sm_90 (H100/H200), GPU or not: what the interpreter
    cannot check (types across loops and branches, layouts, resource limits)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernel_targets"],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
