"""The sparse matmul kernel and its autotuning configs (spmm.py launches it)."""

from __future__ import annotations

import os

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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
