"""Kernels: Triton on CUDA, pure torch elsewhere, one autograd Function per op.

    from sparse_tf.kernels import abs_topk, sparse_linear
    y = abs_topk(x, k)            # dispatches by device, dtype and width
    y = sparse_linear(x, weight, bias, kept, formats)   # sparse kernel or cuBLAS, per shape

The backend is chosen per call: `triton` on CUDA tensors the kernels support, `reference`
(sparse_tf.kernels.reference) otherwise. The environment variable SPARSE_TF_KERNELS forces one:
`reference` everywhere, or `triton` (an error where the kernel cannot run; on a CPU it needs
TRITON_INTERPRET=1, which the test suite sets). Both backends give identical kept sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.errors import SparseTFError
from sparse_tf.kernels import crossovers, graphs, reference
from sparse_tf.kernels.crossovers import DENSE, SPARSE, SpmmPlan

if TYPE_CHECKING:
    from sparse_tf.kernels.spmm import CSR

Backend = Literal["triton", "reference"]
_ENV = "SPARSE_TF_KERNELS"


class KernelError(SparseTFError):
    """A kernel backend was forced where it cannot run."""


def backend_setting() -> Literal["auto", "triton", "reference"]:
    value = os.environ.get(_ENV, "auto")
    if value not in ("auto", "triton", "reference"):
        raise KernelError(f"{_ENV}={value!r}: expected auto, triton or reference")
    return value  # type: ignore[return-value]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def abs_topk_backend(x: Tensor) -> Backend:
    """Which backend `abs_topk(x, k)` and `abs_topk_mask(x, k)` use."""
    from sparse_tf.kernels import abstopk as kernel  # imports triton: only when needed

    setting = backend_setting()
    if setting == "reference":
        return "reference"
    supported = (
        (x.is_cuda or _interpreting())
        and x.dtype in kernel.SUPPORTED_DTYPES
        and x.shape[-1] <= kernel.MAX_WIDTH
    )
    if setting == "triton" and not supported:
        raise KernelError(
            f"{_ENV}=triton: the AbsTopK kernel cannot run on a {x.dtype} tensor of width "
            f"{x.shape[-1]} on {x.device} (needs CUDA or TRITON_INTERPRET=1, "
            f"fp32/bf16/fp16, width <= {kernel.MAX_WIDTH})"
        )
    return "triton" if supported and (x.is_cuda or setting == "triton") else "reference"


def projection_backend(t: Tensor) -> Backend:
    """Which backend `projection_masks` uses for matrices on t's device."""
    setting = backend_setting()
    if setting == "reference":
        return "reference"
    supported = t.is_cuda or _interpreting()
    if setting == "triton" and not supported:
        raise KernelError(
            f"{_ENV}=triton: the projection kernel cannot run on {t.device} (needs CUDA or "
            "TRITON_INTERPRET=1)"
        )
    return "triton" if supported and (t.is_cuda or setting == "triton") else "reference"


def projection_masks(
    weights: list[Tensor], protected: list[Tensor | None], ks: Sequence[int] | Tensor
) -> list[Tensor]:
    """For each matrix, the bool mask of its k largest |w| after its protected entries (which
    outrank everything); ties go to the lower flat index. 1 <= k <= numel. `ks` may be an int32
    tensor on the weights' device (what a CUDA graph of the projection reads)."""
    if weights and projection_backend(weights[0]) == "triton":
        from sparse_tf.kernels.select import topk_masks

        return topk_masks(weights, protected, ks)
    if isinstance(ks, Tensor):
        ks = ks.tolist()
    masks = []
    for w, p, k in zip(weights, protected, ks, strict=True):
        score = w.detach().abs()
        if p is not None:
            score = score.masked_fill(p, torch.inf)
        masks.append(reference.topk_mask(score.reshape(1, -1), k).view_as(w))
    return masks


def project_(
    weights: list[Tensor], protected: list[Tensor | None], ks: Sequence[int] | Tensor
) -> None:
    """Zero, in place, every entry of each matrix outside its `projection_masks` kept set."""
    if weights and projection_backend(weights[0]) == "triton":
        from sparse_tf.kernels.select import project_ as select_project_

        select_project_(weights, protected, ks)
        return
    for w, keep in zip(weights, projection_masks(weights, protected, ks), strict=True):
        w.masked_fill_(~keep, 0.0)


class _AbsTopK(torch.autograd.Function):
    """y = AbsTopK(x); backward recovers the kept set from y (nothing else is saved)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, k: int, backend: str) -> Tensor:  # type: ignore[override]
        if backend == "triton":
            from sparse_tf.kernels.abstopk import abs_topk_fwd

            y = abs_topk_fwd(x, k)
        else:
            y = reference.abs_topk_forward(x, k)
        ctx.save_for_backward(y)
        ctx.k, ctx.backend = k, backend
        return y

    @staticmethod
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        if ctx.backend == "triton":
            from sparse_tf.kernels.abstopk import abs_topk_bwd

            return abs_topk_bwd(y, grad_y, ctx.k), None, None
        return reference.abs_topk_backward(y, grad_y, ctx.k), None, None


def abs_topk_mask(x: Tensor, k: int) -> Tensor:
    """Bool mask [..., n] of the k largest |x| in each row of the last dim (ties: lower index);
    no gradient. 0 <= k <= n."""
    n = x.shape[-1]
    if k <= 0 or k >= n:
        return reference.topk_mask(x, k)  # all or nothing
    if abs_topk_backend(x) == "triton":
        from sparse_tf.kernels.abstopk import abs_topk_mask as kernel

        return kernel(x.detach(), k)
    return reference.topk_mask(x.detach().abs(), k)


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| in each row of the last dim (ties: lower index), zero
    the rest; the gradient flows only through the kept entries. 1 <= k < width."""
    return _AbsTopK.apply(x, k, abs_topk_backend(x))


def spmm_plan(x: Tensor, weight: Tensor, kept: int | None) -> SpmmPlan:
    """Which products of `F.linear(x, weight)` run on the sparse kernel, for a weight with at
    most `kept` nonzeros (None: not known to be sparse, so cuBLAS).

    `auto`: on CUDA, the measured crossovers (`kernels.crossovers`) decide per shape, density
    and token count; elsewhere the dense product. `reference`: always the dense product (on the
    masked weight: the same numbers up to summation order). `triton`: the sparse kernel for
    forward and dX whenever `kept` is known (the interpreter on a CPU)."""
    setting = backend_setting()
    if kept is None or setting == "reference":
        return DENSE
    supported = x.is_cuda or _interpreting()
    if setting == "triton":
        if not supported:
            raise KernelError(
                f"{_ENV}=triton: the sparse matmul cannot run on {x.device} "
                "(needs CUDA or TRITON_INTERPRET=1)"
            )
        return SPARSE
    if not x.is_cuda:
        return DENSE
    d_out, d_in = weight.shape
    return crossovers.plan(x.numel() // d_in, d_in, d_out, kept / weight.numel())


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
        from sparse_tf.kernels import spmm

        version = (weight._version, weight.data_ptr(), dtype)
        if version != self._version:
            self._version, self._fresh = version, set()
        if transpose in self._fresh:
            return self._csr[transpose]

        def build() -> CSR:
            return spmm.csr_of(weight, kept, dtype, transpose=transpose)

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


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype F.linear computes in: the autocast dtype when autocast is on for x's device."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _SparseLinear(torch.autograd.Function):
    """y = x·Wᵀ + b with forward and/or dX on the sparse kernel; dW stays dense (every weight
    gets its gradient, so pruned weights can re-enter: the paper's semantics)."""

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
        from sparse_tf.kernels import spmm

        ctx.x_dtype = x.dtype  # the gradient's dtype, whatever the product computes in
        b = None if bias is None else bias.to(dtype)
        if plan.forward:
            xt = spmm.feature_major(x, dtype)  # [d_in, T], also what dW reads
            y = spmm.spmm_t(xt, formats.get(weight, kept, dtype, transpose=False), b)
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
        from sparse_tf.kernels import spmm

        saved, weight = ctx.saved_tensors  # saved: xt [d_in, T] or x [T, d_in]
        dy = grad_y.to(ctx.dtype)  # [T, d_out]
        dyt = spmm.feature_major(dy, ctx.dtype) if ctx.plan.dx else None  # [d_out, T]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = spmm.spmm_t(dyt, ctx.dx_csr) if ctx.plan.dx else dy @ weight.to(ctx.dtype)
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x_tokens_last = saved if ctx.plan.forward else saved.t()  # [d_in, T]
            dy_tokens_last = dyt if dyt is not None else dy.t()  # [d_out, T]
            grad_w = (dy_tokens_last @ x_tokens_last.t()).to(ctx.w_dtype)  # dense [d_out, d_in]
        if ctx.b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = dy.sum(dim=0, dtype=torch.float32).to(ctx.b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def sparse_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, kept: int | None, formats: WeightFormats
) -> Tensor:
    """`F.linear(x, weight, bias)` for a weight with at most `kept` nonzeros, its forward and
    dX products on the sparse kernel where `spmm_plan` says so; `formats` caches the weight's
    sparse formats between calls (one per layer). Same result as F.linear up to summation
    order, under autocast too."""
    plan = spmm_plan(x, weight, kept)
    if not plan.any or x.numel() == 0:
        return torch.nn.functional.linear(x, weight, bias)
    assert kept is not None
    return _sparse_linear(x, weight, bias, kept, formats, plan)


@torch.compiler.disable  # formats are cached per weight version: eager only
def _sparse_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kept: int,
    formats: WeightFormats,
    plan: SpmmPlan,
) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    y = _SparseLinear.apply(x2, weight, bias, kept, formats, plan, _compute_dtype(x))
    return y.view(*x.shape[:-1], weight.shape[0])


__all__ = [
    "DENSE",
    "SPARSE",
    "KernelError",
    "SpmmPlan",
    "WeightFormats",
    "abs_topk",
    "abs_topk_backend",
    "abs_topk_mask",
    "backend_setting",
    "graphs",
    "project_",
    "projection_backend",
    "projection_masks",
    "reference",
    "sparse_linear",
    "spmm_plan",
]
