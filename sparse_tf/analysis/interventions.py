"""Subspace interventions on activations: keep, remove, flip or scale the part of each
activation that lies in a subspace, around zero or around a mean; usable as a forward hook.

With P = Q Qᵀ the projector of an orthonormal basis Q [d, r] and μ the fill (0 or a mean
activation [d]):

    keep    h' = μ + P (h − μ)            sufficiency: only the subspace carries information
    remove  h' = μ + (I − P)(h − μ)       necessity: everything but the subspace
    flip    h' = μ + (I − 2P)(h − μ)      reflection: the subspace's direction reversed
    scale   h' = μ + (I + (s − 1) P)(h − μ)

    with model.hooks([("blocks.0.hook_resid_post", subspace_hook(SubspaceEdit(Q, "remove")))]):
        logits = model(tokens)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

EditMode = Literal["keep", "remove", "flip", "scale"]


@dataclasses.dataclass(frozen=True)
class SubspaceEdit:
    """What to do to the component of activations [..., d] in the span of `basis` [d, r]."""

    basis: Tensor | np.ndarray
    """Orthonormal columns (see `linalg.orthonormalize`)."""
    mode: EditMode
    mean: Tensor | np.ndarray | None = None
    """The fill μ [d] (e.g. the activations' mean over a dataset); None: zero."""
    scale: float = 1.0
    """The factor of mode 'scale'."""
    positions: Literal["all", "last"] = "all"
    """Edit every position of [B, T, d] activations, or only the last one."""

    def __post_init__(self) -> None:
        if self.mode not in ("keep", "remove", "flip", "scale"):
            raise ValueError(f"mode {self.mode!r}: choose keep, remove, flip or scale")
        if len(self.basis.shape) != 2:
            raise ValueError(f"basis: expected [d, r], got shape {tuple(self.basis.shape)}")


def apply_edit(h: Tensor, edit: SubspaceEdit) -> Tensor:
    """`h` [..., d] with the edit applied (a new tensor; `h` is not modified)."""
    q = torch.as_tensor(edit.basis, dtype=torch.float32, device=h.device)  # [d, r]
    if q.shape[0] != h.shape[-1]:
        raise ValueError(f"basis has {q.shape[0]} rows, activations have width {h.shape[-1]}")
    mu = torch.zeros(h.shape[-1], device=h.device)
    if edit.mean is not None:
        mu = torch.as_tensor(edit.mean, dtype=torch.float32, device=h.device)
    x = h.float() - mu
    inside = (x @ q) @ q.T  # P (h − μ)
    factor = {"keep": None, "remove": 0.0, "flip": -1.0, "scale": edit.scale}[edit.mode]
    out = inside if factor is None else x - inside + factor * inside
    out = (out + mu).to(h.dtype)
    if edit.positions == "last":
        if h.dim() < 3:
            raise ValueError("positions='last' needs activations [B, T, d]")
        full = h.clone()
        full[:, -1] = out[:, -1]
        return full
    return out


def subspace_hook(edit: SubspaceEdit) -> Callable[[Tensor, object], Tensor]:
    """A forward hook (for `HookedModule.hooks` / `run_with_hooks`) applying `edit`."""

    def edit_hook(x: Tensor, hook: object) -> Tensor:
        return apply_edit(x, edit)

    return edit_hook
