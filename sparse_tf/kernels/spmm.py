"""Unstructured sparse matmul on the GPU: Y = X·Wᵀ and dX = dY·W from a compact weight format
(the Triton kernel, its autotuning configs, its launcher and the torch reference), and the
autograd Function of a linear layer that uses it.

Product (`spmm_t`): Out [T, rows] = Aᵀ·Mᵀ for a feature-major activation A [cols, T] and the
CSR (`kernels.csr`) of M, i.e. Out[t, r] = Σ_j M[r, c_j] · A[c_j, t]. Each program owns BO
consecutive rows of M and BT tokens. Its rows' nonzeros are one contiguous run of the format,
walked BJ at a time whatever the row lengths (no padding to the longest row): gather the BJ
activation rows A[c_j, t0:t0+BT], each contiguous in memory, and add them to their output rows
with one tensor-core product by a [BO, BJ] matrix that holds each nonzero's weight in its row
(a one-hot scatter). Why feature-major: with token-major X [T, K] every gathered element would
be its own 2-byte access (one 32-byte memory sector each); a row of Xᵀ is BT contiguous values.
The grid runs the row tiles fastest, so the programs that share a token block (and its
activation rows) run together and read them from L2.

The kernel is bound by gathering activations and writing the dense output, not by arithmetic:
the one-hot product does BO times the useful multiply-adds, which tensor cores absorb at the
densities where a sparse product can beat cuBLAS at all (below ~1/256). A CUDA-core variant
(one nonzero of every row per step, padded to the tile's longest row) measured 5-15% slower
at those densities (benchmarks/RESULTS.md) and was dropped.

`SparseLinearFunction` runs a layer's forward and/or dX on this kernel as its `SpmmPlan` says;
dW stays a dense product (every weight gets its gradient, so pruned weights can re-enter: the
paper's semantics). `WeightFormats` caches a layer's two formats between optimizer steps.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.kernels import graphs
from sparse_tf.kernels.csr import CSR, csr_of
from sparse_tf.kernels.grid import cdiv
from sparse_tf.kernels.plan import SpmmPlan
from sparse_tf.kernels.transpose import feature_major
from sparse_tf.kernels.triton_support import KernelError, tl, triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_spmm_t(a: Tensor, m: Tensor, bias: Tensor | None = None) -> Tensor:
    """Out [T, rows] = aᵀ·mᵀ (+ bias) for a feature-major a [cols, T]: what `spmm_t` computes
    from m's CSR, here on the dense m, in fp32."""
    out = a.float().t() @ m.float().t()
    return out if bias is None else out + bias.float()


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


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
    grid = lambda meta: (cdiv(m.n_rows, meta["BO"]), cdiv(T, meta["BT"]))  # noqa: E731
    args = (a, T, m.ptr, m.cols, m.vals, bias if bias is not None else m.vals, out,
            m.n_rows, out.stride(0), mean.bit_length())  # fmt: skip
    fp32 = _INTERPRET or a.dtype == torch.float32
    _spmm_kernel[grid](*args, HAS_BIAS=bias is not None, DOT_FP32=fp32)
    return out


class WeightFormats:
    """The sparse formats of one weight matrix (CSR of W for the forward, of Wᵀ for dX), built
    on first use and rebuilt whenever the weight changes (its in-place version counter moves,
    as every optimizer step does) or the compute dtype does.

    On CUDA each build (a handful of small launches) is captured once as a CUDA graph and
    replayed after every weight change: issued one by one from Python, the builds of a paper
    model's 32 matrices cost more host time per step than the GPU work of the whole step can
    hide. A graph is recaptured when the weight moves, the dtype changes or `kept` outgrows
    the capacity it was captured with (the L0 anneal only lowers it)."""

    def __init__(self) -> None:
        self._version: tuple[int, int, torch.dtype] | None = None
        self._fresh: set[bool] = set()  # which formats match the weight's current version
        self._csr: dict[bool, CSR] = {}
        self._graphs: dict[bool, tuple[torch.cuda.CUDAGraph, int, int, torch.dtype]] = {}

    def get(self, weight: Tensor, kept: int, dtype: torch.dtype, transpose: bool) -> CSR:
        version = (weight._version, weight.data_ptr(), dtype)
        if version != self._version:
            self._version, self._fresh = version, set()
        if transpose in self._fresh:
            return self._csr[transpose]
        if weight.is_cuda and torch.cuda.is_current_stream_capturing():
            # A capture would record the build once, and replays would not follow the weight.
            raise KernelError(
                "sparse matmul: a layer's weight changed since its sparse formats were built, "
                "inside a CUDA graph capture (build them eagerly first, e.g. by a warm-up run)"
            )

        def build() -> CSR:
            return csr_of(weight, kept, dtype, transpose=transpose)

        if weight.is_cuda and graphs.enabled():
            g = self._graphs.get(transpose)
            if g is None or g[1] != weight.data_ptr() or g[2] < kept or g[3] != dtype:
                graph, self._csr[transpose] = graphs.capture(build, weight.device)
                self._graphs[transpose] = (graph, weight.data_ptr(), kept, dtype)
            self._graphs[transpose][0].replay()
        else:
            self._csr[transpose] = build()
        self._fresh.add(transpose)
        return self._csr[transpose]


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class SparseLinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b with forward and/or dX on the sparse kernel (as `plan` says); dW stays
    dense."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,  # [T, d_in]
        weight: Tensor,  # [d_out, d_in], at most `kept` nonzeros
        bias: Tensor | None,
        kept: int,
        formats: WeightFormats,
        plan: SpmmPlan,
        dtype: torch.dtype,
    ) -> Tensor:
        ctx.x_dtype = x.dtype  # the gradient's dtype, whatever the product computes in
        b = None if bias is None else bias.to(dtype)
        if plan.forward:
            xt = feature_major(x, dtype)  # [d_in, T], also what dW reads
            y = spmm_t(xt, formats.get(weight, kept, dtype, transpose=False), b)
            ctx.save_for_backward(xt, None if plan.dx else weight)
        else:
            x = x.to(dtype)
            y = torch.nn.functional.linear(x, weight.to(dtype), b)
            ctx.save_for_backward(x, None if plan.dx else weight)
        ctx.dx_csr = (
            formats.get(weight, kept, dtype, transpose=True)
            if plan.dx and ctx.needs_input_grad[0]
            else None
        )
        ctx.plan, ctx.dtype = plan, dtype
        ctx.w_dtype = weight.dtype
        ctx.b_dtype = None if bias is None else bias.dtype
        return y  # [T, d_out]

    @staticmethod
    def backward(ctx: FunctionCtx, grad_y: Tensor):  # type: ignore[override]
        saved, weight = ctx.saved_tensors  # saved: xt [d_in, T] or x [T, d_in]
        dy = grad_y.to(ctx.dtype)  # [T, d_out]
        dyt = feature_major(dy, ctx.dtype) if ctx.plan.dx else None  # [d_out, T]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = spmm_t(dyt, ctx.dx_csr) if ctx.plan.dx else dy @ weight.to(ctx.dtype)
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x_tokens_last = saved if ctx.plan.forward else saved.t()  # [d_in, T]
            dy_tokens_last = dyt if dyt is not None else dy.t()  # [d_out, T]
            grad_w = (dy_tokens_last @ x_tokens_last.t()).to(ctx.w_dtype)  # dense [d_out, d_in]
        if ctx.b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = dy.sum(dim=0, dtype=torch.float32).to(ctx.b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None
