"""Kernels: Triton on CUDA, pure torch elsewhere. This module only dispatches.

    from sparse_tf.kernels import abs_topk, sparse_linear
    y = abs_topk(x, k)            # by device, dtype and width
    y = sparse_linear(x, weight, bias, kept, formats)   # sparse kernel or cuBLAS, per shape

Each op lives in one file with its pure-torch reference (the definition the kernels are tested
against), its Triton kernels, their launchers and its autograd Function. triton is optional (it
has wheels for Linux x86_64 and aarch64 only; the reference path runs everywhere): the op
modules import it through `triton_support`, which gives stand-ins where it is not installed, so
that they import everywhere; this module then dispatches every op to its reference:

    abstopk.py      AbsTopK forward (exact threshold search) and backward (kept-set bits)
    gelu_abstopk.py AbsTopK of GELU with one fused backward (the MLP's hidden neurons)
    norm_abstopk.py AbsTopK of RMSNorm in one pass each way (a sublayer's input)
    projection.py   the L0 projection: per-neuron protection, warm-started radix select
    spmm.py         the sparse matmul and the linear layer's autograd Function
    csr.py          the sparse weight format, built on the device
    transpose.py    feature-major copies of activations
    crossovers.py   when the sparse matmul beats cuBLAS, per GPU model (tables, calibration,
                    verification on the live shapes)
    rule.py         the one selection rule: the k largest, ties to the lower index
    graphs.py       launch sequences replayed as CUDA graphs; timing.py: median timings
    triton_support.py  triton, or the stand-ins without it; KernelError

The backend is chosen per call: `triton` on CUDA tensors the kernels support, `reference`
otherwise. The environment variable SPARSE_TF_KERNELS forces one: `reference` everywhere, or
`triton` (an error where the kernel cannot run; on a CPU it needs TRITON_INTERPRET=1, which the
test suite sets). Both backends give identical kept sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from sparse_tf.kernels import (
    abstopk,
    crossovers,
    gelu_abstopk,
    graphs,
    norm_abstopk,
    projection,
    rule,
    spmm,
)
from sparse_tf.kernels.plan import DENSE, SPARSE, SpmmPlan
from sparse_tf.kernels.projection import Protect, Protection
from sparse_tf.kernels.spmm import WeightFormats
from sparse_tf.kernels.triton_support import INSTALLED, KernelError

Backend = Literal["triton", "reference"]
_ENV = "SPARSE_TF_KERNELS"


def backend_setting() -> Literal["auto", "triton", "reference"]:
    value = os.environ.get(_ENV, "auto")
    if value not in ("auto", "triton", "reference"):
        raise KernelError(f"{_ENV}={value!r}: expected auto, triton or reference")
    return value  # type: ignore[return-value]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_INSTALLED = INSTALLED
"""Found once, at import (`triton_support`, which imports triton or its stand-ins by it): a
constant to torch.compile too (a cached lookup traced by Dynamo would be traced anew, with a
warning, in every compiled model)."""


def triton_installed() -> bool:
    """Whether triton can be imported. Without it every op takes the reference path: triton
    has wheels for Linux (x86_64, aarch64) only."""
    return _TRITON_INSTALLED


def _kernels_can_run(device: torch.device) -> bool:
    """Whether the Triton kernels can run on `device`: CUDA or the interpreter, and triton."""
    return (device.type == "cuda" or _interpreting()) and triton_installed()


def _cannot_run(op: str, device: torch.device) -> KernelError:
    """The error of SPARSE_TF_KERNELS=triton where an op's kernel cannot run."""
    if not triton_installed():
        return KernelError(f"{_ENV}=triton: the {op} needs triton, which is not installed")
    return KernelError(
        f"{_ENV}=triton: the {op} cannot run on {device} (needs CUDA or TRITON_INTERPRET=1)"
    )


def abs_topk_backend(x: Tensor) -> Backend:
    """Which backend `abs_topk(x, k)` and `abs_topk_mask(x, k)` use."""
    setting = backend_setting()
    if setting == "reference":
        return "reference"
    supported = (
        _kernels_can_run(x.device)
        and x.dtype in abstopk.SUPPORTED_DTYPES
        and x.shape[-1] <= abstopk.MAX_WIDTH
    )
    if setting == "triton" and not supported:
        if not triton_installed():
            raise _cannot_run("AbsTopK kernel", x.device)
        raise KernelError(
            f"{_ENV}=triton: the AbsTopK kernel cannot run on a {x.dtype} tensor of width "
            f"{x.shape[-1]} on {x.device} (needs CUDA or TRITON_INTERPRET=1, "
            f"fp32/bf16/fp16, width <= {abstopk.MAX_WIDTH})"
        )
    return "triton" if supported and (x.is_cuda or setting == "triton") else "reference"


def projection_backend(t: Tensor) -> Backend:
    """Which backend `projection_masks` and `project_` use for matrices on t's device."""
    setting = backend_setting()
    if setting == "reference":
        return "reference"
    supported = _kernels_can_run(t.device)
    if setting == "triton" and not supported:
        raise _cannot_run("projection kernel", t.device)
    return "triton" if supported and (t.is_cuda or setting == "triton") else "reference"


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| in each row of the last dim (ties: lower index), zero
    the rest; the gradient flows only through the kept entries. 1 <= k < width."""
    return abstopk.AbsTopKFunction.apply(x, k, 1, abs_topk_backend(x))


def abs_topk_split(x: Tensor, k: int, parts: int, bias: Tensor | None = None) -> tuple[Tensor, ...]:
    """`abs_topk` of each of `parts` equal slices of x's last dim (q, k and v of a fused qkv
    product), as `parts` separate tensors, in one launch. 1 <= k < width / parts. `bias`: the
    bias the product that made x added with its gradient cut, whose gradient (x's gradient's
    column sums) the backward then computes in the same pass (`abstopk.BiasSink`)."""
    backend = abs_topk_backend(x)
    if backend == "reference":
        x, bias = abstopk.bias_sink(x, bias), None
    out = abstopk.AbsTopKFunction.apply(x, k, parts, backend, bias)
    return out if parts > 1 else (out,)


def residual_abs_topk(r: Tensor, x: Tensor, k: int, bias: Tensor | None = None) -> Tensor:
    """`r + abs_topk(x, k)` (a sublayer's write into the residual stream) in one pass on the
    kernel path, AbsTopK(x) never materialised. 1 <= k < width. `bias`: as in
    `abs_topk_split`."""
    if abs_topk_backend(x) == "triton":
        return abstopk.ResidualAbsTopKFunction.apply(r, x, k, bias)
    return r + abs_topk(abstopk.bias_sink(x, bias), k)


def gelu_abs_topk(h: Tensor, k: int, bias: Tensor | None = None) -> Tensor:
    """`abs_topk(F.gelu(h), k)` with one fused backward on the kernel path (the MLP's hidden
    neurons). 1 <= k < width. `bias`: as in `abs_topk_split`, for the product that made h."""
    if abs_topk_backend(h) == "triton":
        return gelu_abstopk.GeluAbsTopKFunction.apply(h, k, bias)
    return gelu_abstopk.reference(abstopk.bias_sink(h, bias), k)


def norm_abs_topk(x: Tensor, weight: Tensor, k: int) -> Tensor:
    """`abs_topk(F.rms_norm(x, weight=weight), k)` (a sublayer's input read from the residual
    stream); on the kernel path in one pass each way, its output in the dtype a following
    F.linear computes in (the autocast dtype under autocast: the values that product would
    see). 1 <= k < width."""
    if abs_topk_backend(x) == "triton":
        return norm_abstopk.NormAbsTopKFunction.apply(x, weight, k, compute_dtype(x))
    return norm_abstopk.reference(x, weight, k)


def abs_topk_mask(x: Tensor, k: int) -> Tensor:
    """Bool mask [..., n] of the k largest |x| in each row of the last dim (ties: lower index);
    no gradient. 0 <= k <= n."""
    n = x.shape[-1]
    if k <= 0 or k >= n:
        return rule.topk_mask(x, k)  # all or nothing
    if abs_topk_backend(x) == "triton":
        return abstopk.mask(x.detach(), k)
    return rule.topk_mask(x.detach().abs(), k)


def projection_masks(
    weights: list[Tensor], protections: Sequence[Protection], ks: Sequence[int] | Tensor
) -> list[Tensor]:
    """For each matrix, the bool mask of its k largest |w| after its protected entries (which
    outrank everything); ties go to the lower flat index. 1 <= k <= numel. `ks` may be an int32
    tensor on the weights' device (what a CUDA graph of the projection reads)."""
    if weights and projection_backend(weights[0]) == "triton":
        return projection.topk_masks(weights, protections, ks)
    return projection.reference_masks(weights, protections, ks)


def project_(
    weights: list[Tensor], protections: Sequence[Protection], ks: Sequence[int] | Tensor
) -> None:
    """Zero, in place, every entry of each matrix outside its `projection_masks` kept set."""
    if weights and projection_backend(weights[0]) == "triton":
        projection.project_(weights, protections, ks)
        return
    for w, keep in zip(weights, projection.reference_masks(weights, protections, ks), strict=True):
        w.masked_fill_(~keep, 0.0)


def spmm_plan(x: Tensor, weight: Tensor, kept: int | None) -> SpmmPlan:
    """Which products of `F.linear(x, weight)` run on the sparse kernel, for a weight with at
    most `kept` nonzeros (None: not known to be sparse, so cuBLAS).

    `auto`: on CUDA, the crossovers measured for this GPU model (`kernels.crossovers`) decide
    per shape, density and token count; elsewhere the dense product. `reference`: always the
    dense product (on the masked weight: the same numbers up to summation order). `triton`: the
    sparse kernel for forward and dX whenever `kept` is known (the interpreter on a CPU)."""
    return _table_plan(x.device, x.numel() // weight.shape[1], weight, kept)


def _table_plan(device: torch.device, tokens: int, weight: Tensor, kept: int | None) -> SpmmPlan:
    setting = backend_setting()
    if kept is None or setting == "reference":
        return DENSE
    if setting == "triton":
        if not _kernels_can_run(device):
            raise _cannot_run("sparse matmul", device)
        return SPARSE
    if device.type != "cuda" or not triton_installed():
        return DENSE
    d_out, d_in = weight.shape
    return crossovers.plan(device, tokens, d_in, d_out, kept / weight.numel())


def known_plan(
    device: torch.device, tokens: int, weight: Tensor, kept: int | None, dtype: torch.dtype
) -> SpmmPlan | None:
    """The plan `sparse_linear` follows for `tokens` rows on `device`, computing in `dtype`,
    for a weight with at most `kept` nonzeros, from what this process has already measured;
    None where `sparse_linear` would first have to measure (a verification on the live
    tensors, see `crossovers.verified`). What a CUDA graph's capture and replays go by."""
    plan = _table_plan(device, tokens, weight, kept)
    if not plan.any or device.type != "cuda" or backend_setting() != "auto":
        return plan
    assert kept is not None
    d_out, d_in = weight.shape
    density = kept / weight.numel()
    return crossovers.known_verdict(plan, (device, tokens, d_in, d_out, dtype, density))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype F.linear computes in: the autocast dtype when autocast is on for x's device."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def sparse_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kept: int | None,
    formats: WeightFormats,
    plan: SpmmPlan | None = None,
) -> Tensor:
    """`F.linear(x, weight, bias)` for a weight with at most `kept` nonzeros, its forward and
    dX products on the sparse kernel where `spmm_plan` says so (under `auto`, only once the
    sparse product has also beaten cuBLAS on this layer's own tensors: `crossovers.verified`);
    `formats` caches the weight's sparse formats between calls (one per layer). A given
    `plan` (from `known_plan`) is followed as it is, without measuring anything. Same result
    as F.linear up to summation order, under autocast too."""
    verify = plan is None
    if plan is None:
        plan = spmm_plan(x, weight, kept)
    if not plan.any or x.numel() == 0:
        return torch.nn.functional.linear(x, weight, bias)
    assert kept is not None
    return _sparse_linear(x, weight, bias, kept, formats, plan, verify)


@torch.compiler.disable  # formats are cached per weight version: eager only
def _sparse_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kept: int,
    formats: WeightFormats,
    plan: SpmmPlan,
    verify: bool,
) -> Tensor:
    dtype = compute_dtype(x)
    if verify and x.is_cuda and backend_setting() == "auto":
        plan = crossovers.verified(plan, x, weight, kept, dtype)
        if not plan.any:
            return torch.nn.functional.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    y = spmm.SparseLinearFunction.apply(x2, weight, bias, kept, formats, plan, dtype)
    return y.view(*x.shape[:-1], weight.shape[0])


__all__ = [
    "DENSE",
    "SPARSE",
    "KernelError",
    "Protect",
    "Protection",
    "SpmmPlan",
    "WeightFormats",
    "abs_topk",
    "abs_topk_backend",
    "abs_topk_mask",
    "abs_topk_split",
    "backend_setting",
    "compute_dtype",
    "gelu_abs_topk",
    "graphs",
    "known_plan",
    "norm_abs_topk",
    "project_",
    "projection_backend",
    "projection_masks",
    "residual_abs_topk",
    "sparse_linear",
    "spmm_plan",
]
