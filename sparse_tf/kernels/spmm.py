"""Unstructured sparse matmul on the GPU: Y = X·Wᵀ and dX = dY·W from a compact weight format.

Format (`CSR`): the nonzeros of a matrix M [rows, cols], row by row, as int32 row pointers,
int32 column indices and values in the compute dtype. A layer keeps two, built on the device
(no host synchronisation) whenever its weight changes, i.e. once per optimizer step:
M = W [out, in] for the forward and M = Wᵀ [in, out] for dX (read straight from W with its
strides, no transposed copy).

Product (`spmm_t`): Out [T, rows] = Aᵀ·Mᵀ for a feature-major activation A [cols, T], i.e.
Out[t, r] = Σ_j M[r, c_j] · A[c_j, t]. Each program owns BO consecutive rows of M and BT tokens.
Its rows' nonzeros are one contiguous run of the format, walked BJ at a time whatever the row
lengths (no padding to the longest row): gather the BJ activation rows A[c_j, t0:t0+BT], each
contiguous in memory, and add them to their output rows with one tensor-core product by a
[BO, BJ] matrix that holds each nonzero's weight in its row (a one-hot scatter). Why
feature-major: with token-major X [T, K] every gathered element would be its own 2-byte access
(one 32-byte memory sector each); a row of Xᵀ is BT contiguous values. The grid runs the row
tiles fastest, so the programs that share a token block (and its activation rows) run together
and read them from L2.

The kernel is bound by gathering activations and writing the dense output, not by arithmetic:
the one-hot product does BO times the useful multiply-adds, which tensor cores absorb at the
densities where a sparse product can beat cuBLAS at all (below ~1/256). A CUDA-core variant
(one nonzero of every row per step, padded to the tile's longest row) measured 5-15% slower
at those densities (benchmarks/RESULTS.md) and was dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class CSR:
    """Nonzeros of a matrix [n_rows, n_cols], by row: row r's are cols[ptr[r]:ptr[r+1]]."""

    ptr: Tensor  # [n_rows + 1] int32
    cols: Tensor  # [capacity] int32, ascending within each row
    vals: Tensor  # [capacity] compute dtype
    n_rows: int
    n_cols: int


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
def _csr_build_kernel(
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
    n_chunks = triton.cdiv(max(n_cols, 1), bc)
    ptr = torch.zeros(n_rows + 1, dtype=torch.int32, device=w.device)
    cols = torch.empty(capacity, dtype=torch.int32, device=w.device)
    vals = torch.empty(capacity, dtype=dtype, device=w.device)
    if n_rows and n_cols:
        grid = (triton.cdiv(n_rows, br), n_chunks)
        counts = torch.empty(n_rows, n_chunks, dtype=torch.int32, device=w.device)
        args = (m, m.stride(0), m.stride(1), n_rows, n_cols)
        _csr_count_kernel[grid](*args, counts, n_chunks, BR=br, BC=bc)
        ends = counts.view(-1).cumsum(0, dtype=torch.int32).view(n_rows, n_chunks)
        ptr[1:] = ends[:, -1]
        _csr_build_kernel[grid](*args, ends, n_chunks, cols, vals, BR=br, BC=bc)
    return CSR(ptr, cols, vals, n_rows, n_cols)


def _configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BO": 16, "BJ": 16, "BT": 64}, num_warps=4)]
    return [
        triton.Config({"BO": bo, "BJ": bj, "BT": bt}, num_warps=w)
        for bo, bj, bt, w in [
            (16, 32, 128, 4), (32, 32, 128, 4), (64, 32, 128, 4), (32, 64, 128, 4),
            (16, 16, 256, 4), (32, 32, 256, 8), (64, 64, 128, 8), (16, 64, 128, 4),
        ]
    ]  # fmt: skip


@triton.autotune(configs=_configs(), key=["n_rows", "T", "AVG_NNZ"])
@triton.jit
def _spmm_kernel(
    a_ptr,  # [n_cols, T] feature-major activations
    T,
    ptr_ptr,
    cols_ptr,
    vals_ptr,
    bias_ptr,
    out_ptr,  # [T, n_rows], row stride stride_out
    n_rows,
    stride_out,
    AVG_NNZ,  # log2 bucket of the mean row length: autotuning key only
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,  # fp32 operands (fp32 inputs, and the interpreter)
    BO: tl.constexpr,
    BJ: tl.constexpr,
    BT: tl.constexpr,
):
    """The tile's rows are consecutive, so their nonzeros are one contiguous run of cols/vals.
    It is walked BJ nonzeros at a time, with no padding however uneven the rows: gather the BJ
    activation rows [BJ, BT], and add them to their output rows with one tensor-core product
    by a [BO, BJ] matrix holding each nonzero's weight in its row (a one-hot scatter)."""
    pid_o = tl.program_id(0)  # fastest: row tiles sharing one token block run together
    pid_t = tl.program_id(1)
    row0 = pid_o * BO
    local = tl.arange(0, BO)
    rows = row0 + local  # [BO]
    in_rows = rows < n_rows
    starts = tl.load(ptr_ptr + rows, mask=in_rows, other=2147483647)  # [BO], non-decreasing
    first = tl.load(ptr_ptr + row0)
    last = tl.load(ptr_ptr + tl.minimum(row0 + BO, n_rows))
    toks = pid_t * BT + tl.arange(0, BT)  # [BT]
    in_toks = toks < T
    acc = tl.zeros([BO, BT], dtype=tl.float32)
    for e0 in range(first, last, BJ):
        e = e0 + tl.arange(0, BJ)  # [BJ] nonzero slots
        live = e < last
        col = tl.load(cols_ptr + e, mask=live, other=0)
        w = tl.load(vals_ptr + e, mask=live, other=0.0)
        # The row of slot e: the last of the tile's rows starting at or before e (an empty
        # row shares its start with the next one, which then owns the slot).
        row_of = tl.sum((starts[None, :] <= e[:, None]).to(tl.int32), axis=1) - 1  # [BJ]
        a = tl.load(
            a_ptr + col[:, None].to(tl.int64) * T + toks[None, :],
            mask=live[:, None] & in_toks[None, :],
            other=0.0,
        )  # [BJ, BT]
        hot = local[:, None] == row_of[None, :]  # [BO, BJ]
        if DOT_FP32:
            scatter = tl.where(hot, w.to(tl.float32)[None, :], 0.0)
            acc = tl.dot(scatter, a.to(tl.float32), acc, input_precision="ieee")
        else:
            scatter = tl.where(hot, w[None, :], 0.0).to(a.dtype)
            acc = tl.dot(scatter, a, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=in_rows, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + toks[:, None].to(tl.int64) * stride_out + rows[None, :]
    tl.store(
        out, tl.trans(acc).to(out_ptr.dtype.element_ty), mask=in_toks[:, None] & in_rows[None, :]
    )


def spmm_t(a: Tensor, m: CSR, bias: Tensor | None = None) -> Tensor:
    """Out [T, n_rows] = aᵀ·Mᵀ (+ bias) for a feature-major a [n_cols, T] (contiguous), in a's
    dtype, accumulated in fp32."""
    if a.shape[0] != m.n_cols or not a.is_contiguous():
        raise ValueError(f"spmm_t: a must be a contiguous [{m.n_cols}, T], got {tuple(a.shape)}")
    T = a.shape[1]
    out = torch.empty(T, m.n_rows, dtype=a.dtype, device=a.device)
    if T == 0 or m.n_rows == 0:
        return out
    mean = max(1, m.vals.numel() // max(1, m.n_rows))
    grid = lambda meta: (triton.cdiv(m.n_rows, meta["BO"]), triton.cdiv(T, meta["BT"]))  # noqa: E731
    args = (a, T, m.ptr, m.cols, m.vals, bias if bias is not None else m.vals, out,
            m.n_rows, out.stride(0), mean.bit_length())  # fmt: skip
    fp32 = _INTERPRET or a.dtype == torch.float32
    _spmm_kernel[grid](*args, HAS_BIAS=bias is not None, DOT_FP32=fp32)
    return out


@triton.jit
def _transpose_kernel(x_ptr, out_ptr, R, C, stride_x, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    inside = (rows < R)[:, None] & (cols < C)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=inside)
    out = out_ptr + cols[:, None].to(tl.int64) * R + rows[None, :]
    tl.store(out, tl.trans(x).to(out_ptr.dtype.element_ty), mask=tl.trans(inside))


def feature_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x [T, n] as a contiguous [n, T] of `dtype`: one tiled transposing copy (torch's copy of
    a transposed view runs at a fraction of the memory bandwidth)."""
    T, n = x.shape
    out = torch.empty(n, T, dtype=dtype, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    if T and n:
        b = 64
        _transpose_kernel[(triton.cdiv(n, b), triton.cdiv(T, b))](
            x, out, T, n, x.stride(0), BR=b, BC=b
        )
    return out
