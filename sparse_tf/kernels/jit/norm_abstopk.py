"""The fused RMSNorm-AbsTopK kernels (norm_abstopk.py launches them)."""

from __future__ import annotations

import triton
import triton.language as tl

from sparse_tf.kernels.jit import abstopk


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
    keep = abstopk._select(xn, key, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)
    y = tl.where(keep, xn, 0.0)
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=in_row)
    abstopk._store_bits(bits_ptr + row * tl.cdiv(n_cols, 32), keep, n_cols, BLOCK)
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
