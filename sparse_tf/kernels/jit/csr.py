"""The CSR-building kernels (csr.py launches them)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _block_nonzeros(m_ptr, stride_r, stride_c, n_rows, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """This program's [BR rows, BC columns] block of M: (values, nonzero mask, rows, cols)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)  # [BR]
    cols = tl.program_id(1) * BC + tl.arange(0, BC)  # [BC]
    inside = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    offs = rows[:, None].to(tl.int64) * stride_r + cols[None, :].to(tl.int64) * stride_c
    w = tl.load(m_ptr + offs, mask=inside, other=0.0)  # [BR, BC]
    return w, (w != 0) & inside, rows, cols


@triton.jit
def _csr_count_kernel(
    m_ptr, stride_r, stride_c, n_rows, n_cols, counts_ptr, n_chunks,
    BR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """counts[row, chunk] = the nonzeros of the row within the chunk of BC columns."""
    _, nz, rows, _ = _block_nonzeros(m_ptr, stride_r, stride_c, n_rows, n_cols, BR, BC)
    count = tl.sum(nz.to(tl.int32), axis=1)  # [BR]
    tl.store(counts_ptr + rows * n_chunks + tl.program_id(1), count, mask=rows < n_rows)


@triton.jit
def _csr_place_kernel(
    m_ptr, stride_r, stride_c, n_rows, n_cols, ends_ptr, n_chunks, cols_ptr, vals_ptr,
    BR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Place the nonzeros of one block at their slots: the block's row-chunk ends (running
    sums of the counts) minus what the row has in this chunk, plus the rank within it."""
    w, nz, rows, cols = _block_nonzeros(m_ptr, stride_r, stride_c, n_rows, n_cols, BR, BC)
    end = tl.load(ends_ptr + rows * n_chunks + tl.program_id(1), mask=rows < n_rows, other=0)
    rank = tl.cumsum(nz.to(tl.int32), axis=1)  # [BR, BC], 1-based among the row's nonzeros
    dest = end[:, None] - tl.sum(nz.to(tl.int32), axis=1)[:, None] + rank - 1
    tl.store(cols_ptr + dest, cols[None, :] + tl.zeros([BR, BC], dtype=tl.int32), mask=nz)
    tl.store(vals_ptr + dest, w.to(vals_ptr.dtype.element_ty), mask=nz)
