"""AbsTopK on the GPU: keep the k largest |x| of every row, one read of the row.

Forward: each program owns one row (≤ MAX_WIDTH values, held in registers) and finds the k-th
largest magnitude exactly by a bitwise search over its IEEE-754 bit pattern: for non-negative
floats the bit pattern, read as an integer, orders like the value. One bit is decided per pass
by one count, so a row costs 15 reductions in bf16 (whose low 16 bits, after the exact upcast,
are zero), 18 in fp16 and 31 in fp32; the kernel is ALU-bound (Nsight Compute: ALU pipe at
91%, DRAM at 10%), so the cheapest pass per element wins over fewer, wider passes. Entries above the
threshold are kept, then the tied entries in index order until k are kept: the library's rule.
For k <= SMALL_K (the projection's per-neuron protection, k = 4) the maxima are picked one by
one instead, lowest index first among equals.

Backward: grad · mask, with the mask recovered from the saved output alone (see
`reference.abs_topk_kept`), so AbsTopK stores nothing beyond the output that the next layer
saves anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_WIDTH = 16384
"""Widest row a program holds in registers; wider rows use the reference path."""
SMALL_K = 8
"""Up to this k, the forward picks maxima one by one (2 reductions each) instead of the bitwise
threshold search (8-16 passes): the per-neuron protection of the projection has k = 4."""
_LOW_BIT = {torch.float32: 0, torch.bfloat16: 16, torch.float16: 13}
"""Lowest bit of |x|'s fp32 bit pattern that can be set after the exact upcast of each dtype
(bf16 keeps 8 significant bits of fp32's 24, fp16 11)."""
SUPPORTED_DTYPES = tuple(_LOW_BIT)


@triton.jit
def _abstopk_fwd_kernel(
    x_ptr,
    y_ptr,
    n_cols,
    k,
    stride_x,
    stride_y,
    BLOCK: tl.constexpr,
    LOW_BIT: tl.constexpr,  # lowest bit of the magnitude's bit pattern that can be set
    STORE_MASK: tl.constexpr,  # store the kept set (uint8) instead of the kept values
    SMALL_K: tl.constexpr,  # k is small: pick the maxima one by one instead of searching
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    # Upcast right after the load: exact for bf16/fp16, and the interpreter needs it.
    x = tl.load(x_ptr + row * stride_x + offs, mask=in_row, other=0.0).to(tl.float32)
    key = tl.abs(x).to(tl.int32, bitcast=True)  # orders like |x|
    key = tl.where(in_row, key, -1)  # padding is below every real key
    if SMALL_K:
        # k rounds of (largest key, its lowest index): 2 reductions each, the tie rule built in.
        keep = offs < 0
        live = key
        for _ in range(k):
            top = tl.max(live, axis=0)
            first = tl.min(tl.where(live == top, offs, BLOCK), axis=0)
            keep = keep | (offs == first)
            live = tl.where(offs == first, -2, live)
    else:
        keep = _threshold_keep(key, k, LOW_BIT)
    if STORE_MASK:
        tl.store(y_ptr + row * stride_y + offs, keep.to(tl.uint8), mask=in_row)
    else:
        y = tl.where(keep, x, 0.0)
        tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def _threshold_keep(key, k, LOW_BIT: tl.constexpr):
    """The kept set of a row of keys: the exact k-th largest key by bitwise search, then ties
    in index order."""
    # Bitwise search for t = the k-th largest key, one bit per pass from bit 30 (bit 31 is the
    # sign, 0 in |x|). Invariant: at least k keys are >= t. The kernel is ALU-bound, so a pass
    # is as cheap per element as possible: key >= c is the sign bit of (c - 1) - key (keys are
    # in [-1, 2^31), no overflow), a subtract and a shift-add into the count. Wider passes
    # (2 bits from 3 packed counts) cost more per element than they save in passes
    # (benchmarks/abstopk_tuning.py).
    t = tl.zeros((), dtype=tl.int32)
    for b in tl.static_range(31 - LOW_BIT):
        c = t | (1 << (30 - b))
        ge = ((c - 1) - key).to(tl.uint32, bitcast=True) >> 31  # 1 where key >= c
        n = tl.sum(ge.to(tl.int32), axis=0)
        t = tl.where(n >= k, c, t)
    above = key > t
    tied = key == t
    room = k - tl.sum(above.to(tl.int32), axis=0)
    rank = tl.cumsum(tied.to(tl.int32), axis=0)  # 1-based rank among the ties, by index
    return above | (tied & (rank <= room))


@triton.jit
def _abstopk_bwd_kernel(
    y_ptr,
    gy_ptr,
    gx_ptr,
    n_cols,
    k,
    stride_y,
    stride_gy,
    stride_gx,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    y = tl.load(y_ptr + row * stride_y + offs, mask=in_row, other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + row * stride_gy + offs, mask=in_row, other=0.0).to(tl.float32)
    nonzero = y != 0.0
    zero = (y == 0.0) & in_row
    room = k - tl.sum(nonzero.to(tl.int32), axis=0)
    rank = tl.cumsum(zero.to(tl.int32), axis=0)
    keep = nonzero | (zero & (rank <= room))
    gx = tl.where(keep, gy, 0.0)
    tl.store(gx_ptr + row * stride_gx + offs, gx.to(gx_ptr.dtype.element_ty), mask=in_row)


def _launch_config(width: int, per_thread: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of `width`, the whole row in one program's registers with
    about `per_thread` values per thread."""
    block = triton.next_power_of_2(width)
    num_warps = max(1, min(16, block // (32 * per_thread)))
    return block, num_warps


def _rows(t: Tensor) -> Tensor:
    """t as [rows, width] with unit stride along the width (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def abs_topk_fwd(x: Tensor, k: int) -> Tensor:
    """AbsTopK forward kernel: y with the shape and dtype of x."""
    return _select(x, k, mask=False)


def abs_topk_mask(x: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest |x| of each row (ties: lower index); the same selection as
    the forward kernel, e.g. for the per-neuron protection of the weight projection."""
    return _select(x, k, mask=True).view(torch.bool)


def _select(x: Tensor, k: int, mask: bool) -> Tensor:
    width = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=torch.uint8 if mask else x.dtype, device=x.device)
    if x2.shape[0]:
        block, num_warps = _launch_config(width, 32)
        _abstopk_fwd_kernel[(x2.shape[0],)](
            x2, out, width, k, x2.stride(0), out.stride(0),
            BLOCK=block, LOW_BIT=_LOW_BIT[x.dtype], STORE_MASK=mask, SMALL_K=k <= SMALL_K,
            num_warps=num_warps,
        )  # fmt: skip
    return out.view(x.shape)


def abs_topk_bwd(y: Tensor, grad_y: Tensor, k: int) -> Tensor:
    """AbsTopK backward kernel: grad_y on the kept entries of y's rows, 0 elsewhere."""
    width = y.shape[-1]
    y2, gy2 = _rows(y), _rows(grad_y)
    gx = torch.empty(y2.shape, dtype=grad_y.dtype, device=y.device)
    if y2.shape[0]:
        block, num_warps = _launch_config(width, 16)
        _abstopk_bwd_kernel[(y2.shape[0],)](
            y2, gy2, gx, width, k, y2.stride(0), gy2.stride(0), gx.stride(0),
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return gx.view(grad_y.shape)
