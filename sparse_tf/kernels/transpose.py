"""Feature-major copies of activations, the layout the sparse matmul gathers from.

`feature_major(x [T, n])` is a contiguous [n, T] copy in the compute dtype, by one tiled
transposing kernel (torch's copy of a transposed view runs at a fraction of the memory
bandwidth); `reference_feature_major` is the same copy in torch.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from sparse_tf.kernels.grid import cdiv


def reference_feature_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x [T, n] as a contiguous [n, T] of `dtype`."""
    return x.t().to(dtype).contiguous()


def _jit() -> ModuleType:
    """The Triton kernels, imported at the first launch: nothing else here needs triton."""
    from sparse_tf.kernels.jit import transpose

    return transpose


def feature_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x [T, n] as a contiguous [n, T] of `dtype`: one tiled transposing copy."""
    T, n = x.shape
    out = torch.empty(n, T, dtype=dtype, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    if T and n:
        b = 64
        _jit()._transpose_kernel[(cdiv(n, b), cdiv(T, b))](x, out, T, n, x.stride(0), BR=b, BC=b)
    return out
