"""Pure-torch versions of every kernel: the test oracle, and the path on CPUs.

Each function here defines the semantics its Triton twin must reproduce exactly, including the
one selection rule of the library: among equal scores, the lower index wins.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_mask(score: Tensor, k: int) -> Tensor:
    """Boolean mask of the k largest entries along the last dim; ties go to the lower index.

    This is the one selection rule of the library (AbsTopK, projection and protection all use
    it). `torch.topk` alone is not enough: which of several equal values it returns is
    unspecified and differs between devices, and exact ties are common (zeros in embedding
    rows of unseen tokens, bf16 activations).

    Args:
        score: [..., n] values to rank (NaN-free).
        k: entries to keep per row, clamped to [0, n].

    Returns:
        [..., n] bool, exactly min(max(k, 0), n) True entries per row.
    """
    n = score.shape[-1]
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    kth = score.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # [..., 1]
    above = score > kth
    tied = score == kth
    room = k - above.sum(dim=-1, keepdim=True)  # [..., 1] ties to admit, lowest index first
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def abs_topk_forward(x: Tensor, k: int) -> Tensor:
    """y [..., n]: x where |x| is among the k largest of its row (ties: lower index), else 0."""
    return x.masked_fill(~topk_mask(x.abs(), k), 0.0)


def abs_topk_kept(y: Tensor, k: int) -> Tensor:
    """The kept set of an AbsTopK output y, recovered from y alone (so the backward pass needs
    no mask of its own: y is saved anyway by the layer that consumes it).

    Every nonzero of y was kept. A row with fewer than k nonzeros kept some zeros too: when the
    k-th largest |x| is 0, all nonzeros are kept and the lowest-index zeros fill the rest — so
    they are exactly the first k − nnz zeros of y's row.
    """
    nonzero = y != 0
    zero = ~nonzero
    room = k - nonzero.sum(dim=-1, keepdim=True)  # [..., 1]
    return nonzero | (zero & (zero.cumsum(dim=-1) <= room))


def abs_topk_backward(y: Tensor, grad_y: Tensor, k: int) -> Tensor:
    """Gradient of AbsTopK: grad_y on the kept entries, 0 elsewhere."""
    return grad_y.masked_fill(~abs_topk_kept(y, k), 0.0)


def csr(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row pointers int32 [rows + 1], column indices int32, values) of m's nonzeros, row by
    row, columns ascending: what `kernels.spmm.csr_of` builds on the device."""
    rows, cols = m.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=m.shape[0])
    ptr = torch.zeros(m.shape[0] + 1, dtype=torch.int32, device=m.device)
    ptr[1:] = counts.cumsum(0)
    return ptr, cols.to(torch.int32), m[rows, cols]


def spmm_t(a: Tensor, m: Tensor, bias: Tensor | None = None) -> Tensor:
    """Out [T, rows] = aᵀ·mᵀ (+ bias) for a feature-major a [cols, T]: the product
    `kernels.spmm.spmm_t` computes from m's CSR, here on the dense m, in fp32."""
    out = a.float().t() @ m.float().t()
    return out if bias is None else out + bias.float()
