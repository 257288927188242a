"""Feature-major copies of activations, the layout the sparse matmul gathers from.

`feature_major(x [T, n])` is a contiguous [n, T] copy in the compute dtype, by one tiled
transposing kernel (torch's copy of a transposed view runs at a fraction of the memory
bandwidth); `reference_feature_major` is the same copy in torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparse_tf.kernels.grid import cdiv
from sparse_tf.kernels.triton_support import tl, triton

# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_feature_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x [T, n] as a contiguous [n, T] of `dtype`."""
    return x.t().to(dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _transpose_kernel(x_ptr, out_ptr, R, C, stride_x, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    inside = (rows < R)[:, None] & (cols < C)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=inside)
    out = out_ptr + cols[:, None].to(tl.int64) * R + rows[None, :]
    tl.store(out, tl.trans(x).to(out_ptr.dtype.element_ty), mask=tl.trans(inside))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def feature_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x [T, n] as a contiguous [n, T] of `dtype`: one tiled transposing copy."""
    T, n = x.shape
    out = torch.empty(n, T, dtype=dtype, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    if T and n:
        b = 64
        _transpose_kernel[(cdiv(n, b), cdiv(T, b))](x, out, T, n, x.stride(0), BR=b, BC=b)
    return out
