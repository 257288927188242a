"""AbsTopK of RMSNorm (a sublayer's input read from the residual stream) in one pass each way:
launchers of the Triton kernels (`jit/norm_abstopk.py`), autograd Function and the pure-torch
reference.

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
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.kernels import abstopk
from sparse_tf.kernels.grid import cdiv

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
# Launchers
# ---------------------------------------------------------------------------------------------
def _jit() -> ModuleType:
    """The Triton kernels, imported at the first launch: nothing else here needs triton."""
    from sparse_tf.kernels.jit import norm_abstopk

    return norm_abstopk


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
        _jit()._norm_abstopk_fwd_kernel[(rows,)](
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
    dw = torch.zeros(programs, width, dtype=torch.float32, device=x.device)
    if rows:
        block, num_warps = abstopk.launch_config(width, 16)
        _jit()._norm_abstopk_bwd_kernel[(programs,)](
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
