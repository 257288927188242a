"""The compact weight format of the sparse matmul, built on the GPU: CSR of W or of Wᵀ.

`CSR` holds the nonzeros of a matrix M [rows, cols], row by row, as int32 row pointers, int32
column indices (ascending within a row) and values in the compute dtype. A layer keeps two,
rebuilt on the device (no host synchronisation) whenever its weight changes, i.e. once per
optimizer step: M = W [out, in] for the forward and M = Wᵀ [in, out] for dX (read straight from
W with its strides, no transposed copy). `reference_csr` is the same format from torch ops;
`csr_of` launches the two Triton kernels that build it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_tf.kernels.grid import cdiv
from sparse_tf.kernels.triton_support import tl, triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class CSR:
    """Nonzeros of a matrix [n_rows, n_cols], by row: row r's are cols[ptr[r]:ptr[r+1]]."""

    ptr: Tensor  # [n_rows + 1] int32
    cols: Tensor  # [capacity] int32, ascending within each row
    vals: Tensor  # [capacity] compute dtype
    n_rows: int
    n_cols: int


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_csr(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row pointers int32 [rows + 1], column indices int32, values) of m's nonzeros, row by
    row, columns ascending: what `csr_of` builds on the device."""
    rows, cols = m.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=m.shape[0])
    ptr = torch.zeros(m.shape[0] + 1, dtype=torch.int32, device=m.device)
    ptr[1:] = counts.cumsum(0)
    return ptr, cols.to(torch.int32), m[rows, cols]


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def csr_of(w: Tensor, capacity: int, dtype: torch.dtype, transpose: bool = False) -> CSR:
    """The CSR of w [n, m] (or of wᵀ), values cast to `dtype`; `capacity` >= the nonzeros of w
    (the caller's guarantee: the projection's kept count). No host synchronisation.

    The matrix is cut into blocks of BR rows x BC columns, one program each, so that any
    shape keeps the GPU busy: one pass counts each (row, chunk)'s nonzeros, a running sum
    over the flattened counts gives every block its slots (and the row pointers), and a
    second pass places the block's nonzeros in column order. Three launches, W read twice."""
    m = w.detach().t() if transpose else w.detach()
    n_rows, n_cols = m.shape
    # Coalesced loads either way: along BC for W's rows, along BR for Wᵀ's rows (W's columns).
    br, bc = (64, 64) if _INTERPRET else ((64, 64) if transpose else (8, 512))
    n_chunks = cdiv(max(n_cols, 1), bc)
    ptr = torch.zeros(n_rows + 1, dtype=torch.int32, device=w.device)
    cols = torch.empty(capacity, dtype=torch.int32, device=w.device)
    vals = torch.empty(capacity, dtype=dtype, device=w.device)
    if n_rows and n_cols:
        grid = (cdiv(n_rows, br), n_chunks)
        counts = torch.empty(n_rows, n_chunks, dtype=torch.int32, device=w.device)
        args = (m, m.stride(0), m.stride(1), n_rows, n_cols)
        _csr_count_kernel[grid](*args, counts, n_chunks, BR=br, BC=bc)
        ends = counts.view(-1).cumsum(0, dtype=torch.int32).view(n_rows, n_chunks)
        ptr[1:] = ends[:, -1]
        _csr_place_kernel[grid](*args, ends, n_chunks, cols, vals, BR=br, BC=bc)
    return CSR(ptr, cols, vals, n_rows, n_cols)
