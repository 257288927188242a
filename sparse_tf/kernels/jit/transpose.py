"""The transposing copy kernel (transpose.py launches it)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _transpose_kernel(x_ptr, out_ptr, R, C, stride_x, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    inside = (rows < R)[:, None] & (cols < C)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=inside)
    out = out_ptr + cols[:, None].to(tl.int64) * R + rows[None, :]
    tl.store(out, tl.trans(x).to(out_ptr.dtype.element_ty), mask=tl.trans(inside))
