"""The weight-sparsity config (`SparsityConfig`) and AbsTopK's k, without torch: the
command line's `--help` builds its parser from them (`sparse_tf.sparsity` re-exports both)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from sparse_tf.config import Config, check


def abstopk_k(frac: float, width: int) -> int:
    """Entries AbsTopK keeps in a row of `width` values: int(frac · width), as the official code."""
    return int(frac * width)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparsityConfig(Config):
    """Weight sparsity of a training run (the paper's recipe by default)."""

    l0: float
    """Target fraction of nonzero entries in each block weight matrix (1/64 in the paper preset)."""
    embed_mult: float | None = 4.0
    """Embedding and unembedding matrices (and the positional table, unless `pos_density` is
    "block") end at min(1, l0 · embed_mult).
    None: d_model / 256, the official train.py's ratio (its width expansion factor over a
    d_model-256 base model, with d_mlp = 4 · d_model); 4 at d_model 1024."""
    embed_schedule: Literal["ratio", "linear"] = "ratio"
    """How embedding densities follow the block L0 while it anneals. "ratio": min(1,
    embed_mult · L0) at every step, so they stay dense until L0 falls below 1/embed_mult.
    "linear" (the official train.py): a straight line in L0 from dense (L0 = 1) to the final
    min(1, embed_mult · l0), so they thin out from the start of the anneal."""
    kept_rounding: Literal["round", "floor"] = "round"
    """A matrix keeps round(density · numel) entries, or int(density · numel) (floor: the
    official train.py); at least 1 either way."""
    anneal_clock: Literal["after_step", "before_step"] = "after_step"
    """Which fraction of training step i (0-based) of T reads the L0 schedule at: (i + 1) / T,
    the fraction done once it is taken, or i / T ("before_step": the official train.py)."""
    pos_density: Literal["embedding", "block"] = "embedding"
    """The positional table's density (unprotected either way): an embedding matrix's, or the
    block L0 ("block": the official train.py, whose apply_topk_ gives the embedding density
    only to wte and lm_head, so that wpe falls to the block matrices' rule)."""
    min_per_neuron: int = 4
    """Protection j: never leave a neuron with fewer than j nonzeros (0 disables)."""
    anneal_start: float = 0.01
    """Fraction of training at which L0 starts to fall from 1 (dense)."""
    anneal_end: float = 0.5
    """Fraction of training at which L0 reaches `l0`."""
    sharkfin: bool = True
    """Multiply the LR by √(l0 / L0_now) while annealing (≤ 1; 1 once L0 reaches the target)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.l0 <= 1.0, self, "l0", "must be in (0, 1]")
        check(self.embed_mult is None or self.embed_mult > 0.0, self, "embed_mult", "must be > 0")
        check(self.min_per_neuron >= 0, self, "min_per_neuron", "must be >= 0")
        check(0.0 <= self.anneal_start <= 1.0, self, "anneal_start", "must be in [0, 1]")
        check(
            self.anneal_start <= self.anneal_end <= 1.0,
            self,
            "anneal_end",
            f"must be in [anneal_start={self.anneal_start}, 1]",
        )
