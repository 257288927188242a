"""AbsTopK of GELU (the MLP's hidden neurons), with one fused backward: the pure-torch
reference, the backward's Triton kernel (the forward is AbsTopK's kernel, `abstopk.py`), its
launcher and the autograd Function.

Forward, one pass: the AbsTopK forward kernel computes GELU itself (torch's formula, in fp32,
rounded to h's dtype), selects, and writes the kept values and the kept set as bits; GELU's
output is never written and read back (256 MB per layer at d_mlp 4096 and 16k bf16 tokens).
The selection is exact for the values the kernel computed. Those are F.gelu's to rounding: the
kernel's erf is libdevice's, torch's CUDA kernel compiles its own: up to 2 fp32 ulps apart on
an H100, which matters only where 1 + erf cancels (x < -4, |GELU| < 1e-6, never near a
threshold). At the MLP shape (16k x 4096, H100) the outputs and kept sets equalled F.gelu +
AbsTopK on all 67M entries in bf16; in fp32 the kept sets were identical and 1% of the kept
values differed by 1-2 ulps. Under the Triton interpreter the erf is Python's.

Backward, one pass: the gradient of the hidden pre-activation h is gy · GELU'(h) on the kept
entries and 0 elsewhere, computed from gy, h and the bits. Unfused, the AbsTopK backward writes
the masked gradient and GELU's backward reads it back; at d_mlp 4096 and 16k tokens that round
trip is 268 MB per layer.
GELU'(h) is torch's formula (cdf + h · pdf, in fp32), so gradients agree to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.kernels import abstopk
from sparse_tf.kernels.grid import cdiv
from sparse_tf.kernels.triton_support import tl, triton

# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference(h: Tensor, k: int) -> Tensor:
    """AbsTopK(GELU(h)) with torch's autograd: the definition."""
    return abstopk.AbsTopKFunction.apply(F.gelu(h), k, 1, "reference")


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _gelu_abstopk_bwd_kernel(
    bits_ptr, gy_ptr, h_ptr, gh_ptr, gb_ptr, n_rows, n_cols, stride_gy, stride_h, stride_gh,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, BIAS: tl.constexpr,
):  # fmt: skip
    """Rows [block · ROWS, (block + 1) · ROWS): gh = gy · GELU'(h) where the forward kept the
    entry, else 0; with BIAS also their column sums (fp32) into the partials at gb."""
    block = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = block.to(tl.int64) * ROWS + i
        live = in_row & (row < n_rows)
        keep = abstopk._load_keep(bits_ptr + row * tl.cdiv(n_cols, 32), n_cols, BLOCK)
        gy = tl.load(gy_ptr + row * stride_gy + offs, mask=live & keep, other=0.0)
        h = tl.load(h_ptr + row * stride_h + offs, mask=live & keep, other=0.0).to(tl.float32)
        # torch's GELU backward (approximate="none"), in fp32.
        cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
        gh = tl.where(keep, gy.to(tl.float32) * (cdf + h * pdf), 0.0).to(gh_ptr.dtype.element_ty)
        tl.store(gh_ptr + row * stride_gh + offs, gh, mask=live)
        if BIAS:
            acc += gh.to(tl.float32)
    if BIAS:
        abstopk._column_sums_store(gb_ptr, acc, block, 0, n_cols, offs, 1)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def backward(
    bits: Tensor, grad: Tensor, h: Tensor, want_bias: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The gradient of h [..., n] from the output's gradient and the forward's kept bits; with
    `want_bias`, also its column sums [n] in fp32 (`abstopk.BiasSink` says what for)."""
    g2, h2 = abstopk.as_rows(grad.to(h.dtype)), abstopk.as_rows(h)
    rows, width = h2.shape
    gh = torch.empty(h2.shape, dtype=h.dtype, device=h.device)
    per_program = abstopk.bias_rows(want_bias)
    partials = abstopk.bias_partials(gh, width, want_bias)
    if rows:
        block, num_warps = abstopk.backward_config(width, want_bias)
        _gelu_abstopk_bwd_kernel[(cdiv(rows, per_program),)](
            bits, g2, h2, gh, partials, rows, width, g2.stride(0), h2.stride(0), gh.stride(0),
            BLOCK=block, ROWS=per_program, BIAS=want_bias, num_warps=num_warps,
        )  # fmt: skip
    return gh.view(h.shape), abstopk.bias_grad(partials) if want_bias else None


# ---------------------------------------------------------------------------------------------
# Under torch.compile: the backward kernel as an opaque operator (abstopk.py says why)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("sparse_tf::gelu_abstopk_backward", mutates_args=())
def _backward_op(bits: Tensor, grad: Tensor, h: Tensor, want_bias: bool) -> list[Tensor]:
    gh, gb = backward(bits, grad, h, want_bias)
    return [gh] if gb is None else [gh, gb]


@_backward_op.register_fake
def _(bits: Tensor, grad: Tensor, h: Tensor, want_bias: bool) -> list[Tensor]:
    gh = torch.empty_like(h)
    return [gh, h.new_empty(h.shape[-1], dtype=torch.float32)] if want_bias else [gh]


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class GeluAbsTopKFunction(torch.autograd.Function):
    """y = AbsTopK(GELU(h)); saves h (as GELU itself would) and the kept bits. A `bias` gets
    h's gradient's column sums as its gradient (`abstopk.BiasSink` says when)."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: Tensor, k: int, bias: Tensor | None = None) -> Tensor:  # type: ignore[override]
        (y,), bits = abstopk.run_forward(h, k, gelu=True)
        ctx.save_for_backward(bits, h)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, Tensor | None]:  # type: ignore[override]
        bits, h = ctx.saved_tensors
        want_bias = ctx.bias_dtype is not None
        if torch.compiler.is_compiling():  # an opaque operator (abstopk.run_forward says why)
            gh, *rest = _backward_op(bits, grad, h, want_bias)
            gb = rest[0] if rest else None
        else:
            gh, gb = backward(bits, grad, h, want_bias)
        return gh, None, abstopk.as_bias_grad(gb, ctx.bias_dtype)
