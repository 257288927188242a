"""AbsTopK of RMSNorm (a sublayer's input read from the residual stream) in one pass each way:
the pure-torch reference, the Triton kernels, their launchers and the autograd Function.

Unfused, a sublayer's input costs four passes over the fp32 residual stream under autocast:
RMSNorm writes the normalized stream in fp32, AbsTopK reads and writes it, and the first
product casts it to bf16; the backward casts the gradient back to fp32, masks it, and runs
RMSNorm's backward. Fused, the forward reads the residual row once and writes the kept values
directly in the dtype the next product computes in (bf16 under autocast), the kept set as bits
and the row's 1/rms; the backward reads the gradient, the residual row and the bits and writes
the residual's gradient, with the gain's gradient summed per program.

The numbers are the unfused path's: the row is normalized in fp32 as `F.rms_norm` does,
x · (1/rms) · gain, rounded to the norm's own dtype (x's), and AbsTopK selects on those values
exactly (ties by index, `rule.topk_mask`); the cast to the output dtype comes after the
selection, as the product's own cast would. Only 1/rms comes from a different summation order
than torch's, so it may differ from torch's by a few units in the last place: the kept set is
exact for the values the kernel normalized (`reference_with_rstd`), and those are within fp32
rounding of torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def norm_eps(x: Tensor) -> float:
    """F.rms_norm's default eps for x: its dtype's machine epsilon."""
    return torch.finfo(x.dtype).eps


def reference(x: Tensor, weight: Tensor, k: int) -> Tensor:
    """AbsTopK(F.rms_norm(x) · weight) with torch's autograd: the definition (in x's dtype)."""
    normalized = F.rms_norm(x, (x.shape[-1],), weight, norm_eps(x))
    return abstopk.AbsTopKFunction.apply(normalized, k, 1, "reference")


def reference_with_rstd(
    x: Tensor,
    weight: Tensor,
    rstd: Tensor,
    k: int,
    cast: Callable[[Tensor, torch.dtype], Tensor] = Tensor.to,
) -> Tensor:
    """The forward's output for given 1/rms values rstd [...] (x's leading shape): x · rstd ·
    weight in fp32 (the kernel's two roundings, in its order), cast to x's dtype by `cast`
    (torch's rounding; the Triton interpreter truncates to bf16), AbsTopK."""
    normalized = (x.float() * rstd.unsqueeze(-1)) * weight.float()
    return abstopk.reference_forward(cast(normalized, x.dtype), k)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _norm_abstopk_fwd_kernel(
    x_ptr, w_ptr, y_ptr, bits_ptr, rstd_ptr, n_cols, k, eps, log_ratio, stride_x, stride_y,
    BLOCK: tl.constexpr, LOW_BIT: tl.constexpr, GUIDED: tl.constexpr, PEEL: tl.constexpr,
):  # fmt: skip
    """Row `row`: y = AbsTopK(x · rstd · w) in y's dtype, its kept bits, and rstd = 1/rms."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    x = tl.load(x_ptr + row * stride_x + offs, mask=in_row, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    # Rounded to x's dtype (the dtype F.rms_norm returns) before the selection, as unfused.
    xn = ((x * rstd) * w).to(x_ptr.dtype.element_ty).to(tl.float32)
    key = (tl.abs(xn).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)  # orders like |xn|
    key = tl.where(in_row, key, -1)  # padding is below every real key
    words = abstopk._select(xn, key, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)
    y = tl.where(abstopk._unpack(words, BLOCK), xn, 0.0)
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=in_row)
    abstopk._store_words(bits_ptr + row * tl.cdiv(n_cols, 32), words, n_cols)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _norm_abstopk_bwd_kernel(
    bits_ptr, g_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, n_rows, n_cols,
    stride_g, stride_x, stride_dx,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Rows pid, pid + P, ...: dx = rstd · (ĝ·w − x̂ · mean(ĝ·w·x̂)) with x̂ = x · rstd and ĝ the
    gradient on the kept entries (0 elsewhere); this program's share of the gain's gradient,
    Σ ĝ · x̂ over its rows, into dw[pid]."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    w = tl.load(w_ptr + offs, mask=in_row, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(pid, n_rows, tl.num_programs(0)):
        row = r + tl.zeros((), dtype=tl.int64)  # 64-bit offsets below
        keep = abstopk._load_keep(bits_ptr + row * tl.cdiv(n_cols, 32), n_cols, BLOCK)
        g = tl.load(g_ptr + row * stride_g + offs, mask=keep, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * stride_x + offs, mask=in_row, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x * rstd
        gw = g * w
        dx = rstd * (gw - x_hat * (tl.sum(gw * x_hat, axis=0) / n_cols))
        tl.store(dx_ptr + row * stride_dx + offs, dx.to(dx_ptr.dtype.element_ty), mask=in_row)
        dw += g * x_hat
    tl.store(dw_ptr + pid * n_cols + offs, dw, mask=in_row)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


BWD_PROGRAMS = 1024
"""Most programs of the backward: each sums its rows' share of the gain's gradient, so this
bounds the partial sums ([programs, width] fp32) that torch adds up afterwards."""


def forward(
    x: Tensor, weight: Tensor, k: int, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(AbsTopK(rms_norm(x) · weight) [x's shape] in out_dtype, kept bits int32 [rows,
    ceil(width / 32)], 1/rms fp32 [rows])."""
    x2 = abstopk.as_rows(x)
    rows, width = x2.shape
    y = torch.empty(rows, width, dtype=out_dtype, device=x.device)
    bits = torch.empty(rows, cdiv(width, 32), dtype=torch.int32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows:
        block, num_warps = abstopk.launch_config(width, 32)
        _norm_abstopk_fwd_kernel[(rows,)](
            x2, weight, y, bits, rstd, width, k, norm_eps(x), math.log(width / k),
            x2.stride(0), y.stride(0),
            BLOCK=block, LOW_BIT=abstopk._LOW_BIT[x.dtype],
            GUIDED=abstopk.default_search(width) == "guided", PEEL=abstopk.PEEL,
            num_warps=num_warps,
        )  # fmt: skip
    return y.view(x.shape), bits, rstd


def backward(
    bits: Tensor, grad: Tensor, x: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """(the gradient of x [x's shape, x's dtype], the gain's gradient [width, its dtype]) from
    the output's gradient and what the forward saved."""
    g2, x2 = abstopk.as_rows(grad), abstopk.as_rows(x)
    rows, width = x2.shape
    dx = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    programs = max(1, min(rows, BWD_PROGRAMS))
    # Every program stores its whole row of partials: nothing to initialise (no memset, and
    # one launch less per call), except where no program runs and the sum must be 0.
    alloc = torch.empty if rows else torch.zeros
    dw = alloc(programs, width, dtype=torch.float32, device=x.device)
    if rows:
        block, num_warps = abstopk.launch_config(width, 16)
        _norm_abstopk_bwd_kernel[(programs,)](
            bits, g2, x2, weight, rstd, dx, dw, rows, width,
            g2.stride(0), x2.stride(0), dx.stride(0),
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return dx.view(x.shape), dw.sum(dim=0).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# Under torch.compile: the kernels as opaque operators (abstopk.run_forward says why)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("sparse_tf::norm_abstopk_forward", mutates_args=())
def _forward_op(
    x: Tensor, weight: Tensor, k: int, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    return forward(x, weight, k, out_dtype)


@_forward_op.register_fake
def _(x: Tensor, weight: Tensor, k: int, out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    rows = x.numel() // max(1, x.shape[-1])
    return (
        x.new_empty(x.shape, dtype=out_dtype),
        x.new_empty((rows, (x.shape[-1] + 31) // 32), dtype=torch.int32),
        x.new_empty((rows,), dtype=torch.float32),
    )


@torch.library.custom_op("sparse_tf::norm_abstopk_backward", mutates_args=())
def _backward_op(
    bits: Tensor, grad: Tensor, x: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    return backward(bits, grad, x, weight, rstd)


@_backward_op.register_fake
def _(bits: Tensor, grad: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight)


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class NormAbsTopKFunction(torch.autograd.Function):
    """y = AbsTopK(rms_norm(x) · weight) in `out_dtype`; saves x (which RMSNorm saves too), 1/rms
    and the kept bits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, weight: Tensor, k: int, out_dtype: torch.dtype
    ) -> Tensor:
        run = _forward_op if torch.compiler.is_compiling() else forward
        y, bits, rstd = run(x, weight, k, out_dtype)
        ctx.save_for_backward(bits, x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        bits, x, weight, rstd = ctx.saved_tensors
        run = _backward_op if torch.compiler.is_compiling() else backward
        dx, dw = run(bits, grad, x, weight, rstd)
        return dx, dw, None, None
