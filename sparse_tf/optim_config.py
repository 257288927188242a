"""The optimizer's config (`OptimConfig`), without torch: the `--help` of the training commands
builds its parser from it (`sparse_tf.optim` re-exports it)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from sparse_tf.config import Config, check


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig(Config):
    """Adam with the official script's settings."""

    lr: float = 1.28e-2
    """Peak learning rate (before the sharkfin factor)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 0.1
    """Adam epsilon; 0.1 is the paper's (large on purpose)."""
    weight_decay: float = 0.1
    """Decoupled decay applied after the projection, to ≥2-D weights except the bigram table."""
    warmup_frac: float = 0.01
    """Fraction of steps of linear LR warmup."""
    lr_decay: bool = True
    """Decay the LR linearly to 0 at the end of training after warmup (else hold it)."""
    grad_rms: float | None = 1.0
    """Rescale the whole gradient to this global RMS every step; None leaves it alone."""
    warmup_clock: Literal["after_step", "before_step"] = "after_step"
    """Warmup factor of step i (0-based) of W warmup steps: (i + 1) / W, or i / W
    ("before_step": the official train.py, whose first step has LR 0)."""
    train_eot_bigram: bool = True
    """False: the bigram table's row of <|endoftext|> keeps its initial values (its gradient
    is zeroed before the gradient RMS is taken), as the official code leaves it untrained."""

    def __post_init__(self) -> None:
        super().__post_init__()
        finite = math.isfinite
        check(finite(self.lr) and self.lr > 0, self, "lr", "must be finite and > 0")
        check(all(0.0 <= b < 1.0 for b in self.betas), self, "betas", "each must be in [0, 1)")
        check(finite(self.eps) and self.eps >= 0, self, "eps", "must be finite and >= 0")
        check(
            finite(self.weight_decay) and self.weight_decay >= 0,
            self,
            "weight_decay",
            "must be finite and >= 0",
        )
        check(0.0 <= self.warmup_frac < 1.0, self, "warmup_frac", "must be in [0, 1)")
        check(
            self.grad_rms is None or (finite(self.grad_rms) and self.grad_rms > 0),
            self,
            "grad_rms",
            "must be finite and > 0, or None",
        )
