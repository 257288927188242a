"""The fused GELU-AbsTopK backward kernel (gelu_abstopk.py launches it)."""

from __future__ import annotations

import triton
import triton.language as tl

from sparse_tf.kernels.jit import abstopk


@triton.jit
def _gelu_abstopk_bwd_kernel(
    bits_ptr, gy_ptr, h_ptr, gh_ptr, n_cols, stride_gy, stride_h, stride_gh,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Row `row`: gh = gy · GELU'(h) where the forward kept the entry, else 0."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    keep = abstopk._load_keep(bits_ptr + row * tl.cdiv(n_cols, 32), n_cols, BLOCK)
    gy = tl.load(gy_ptr + row * stride_gy + offs, mask=in_row & keep, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + row * stride_h + offs, mask=in_row & keep, other=0.0).to(tl.float32)
    # torch's GELU backward (approximate="none"), in fp32.
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
    gh = tl.where(keep, gy * (cdf + h * pdf), 0.0)
    tl.store(gh_ptr + row * stride_gh + offs, gh.to(gh_ptr.dtype.element_ty), mask=in_row)
