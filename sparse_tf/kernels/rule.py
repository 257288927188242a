"""The one selection rule of the library, in pure torch: the k largest, ties to the lower index.

AbsTopK, the per-neuron protection and the L0 projection all select with it, on every backend;
each kernel's torch reference (beside the kernel, in its op's file) is built on this function.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_mask(score: Tensor, k: int) -> Tensor:
    """Boolean mask of the k largest entries along the last dim; ties go to the lower index.

    `torch.topk` alone is not enough: which of several equal values it returns is
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
