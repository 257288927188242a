"""Kernels: Triton on CUDA, pure torch elsewhere, one autograd Function per op.

    from sparse_tf.kernels import abs_topk
    y = abs_topk(x, k)            # dispatches by device, dtype and width

The backend is chosen per call: `triton` on CUDA tensors the kernels support, `reference`
(sparse_tf.kernels.reference) otherwise. The environment variable SPARSE_TF_KERNELS forces one:
`reference` everywhere, or `triton` (an error where the kernel cannot run; on a CPU it needs
TRITON_INTERPRET=1, which the test suite sets). Both backends give identical kept sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.errors import SparseTFError
from sparse_tf.kernels import graphs, reference

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


__all__ = [
    "KernelError",
    "abs_topk",
    "abs_topk_backend",
    "abs_topk_mask",
    "backend_setting",
    "graphs",
    "project_",
    "projection_backend",
    "projection_masks",
    "reference",
]
