"""How to prune (`PruneConfig`), without torch: `sparse-tf prune --help` builds its parser from
it (`sparse_tf.pruning.search` and `sparse_tf.pruning` re-export it)."""

from __future__ import annotations

import dataclasses

from sparse_tf.config import Config, check
from sparse_tf.tasks.base import CHANCE_LOSS


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneConfig(Config):
    """How to prune. The defaults are the paper's (Table 2 search centres, target 0.15)."""

    target_loss: float = 0.15
    """Task loss (binary cross-entropy per prompt, chance 0.693) the circuit must reach."""
    budget: int = 1
    """Completed trials (mask-training runs) of the hyperparameter search, an Optuna study:
    the first at the centre (these settings), the next ones TPE's; the smallest circuit that
    meets the target is kept. 1 (the default, fast on a CPU) runs the centre alone; the paper
    runs 256 (32 CARBS iterations of 8)."""
    steps: int = 500
    """Optimizer steps of the first trial (the centre; later trials search 0.5-2x)."""
    batch_pairs: int = 64
    """Task pairs per step (each gives two prompts)."""
    lr: float = 3e-3
    """Peak learning rate of τ (decays linearly to zero)."""
    k_coef: float = 1e-4
    """Penalty per active node."""
    weight_decay: float = 1e-3
    """AdamW weight decay of τ (pulls scores towards the on/off boundary)."""
    inv_beta2: float = 0.05
    """1 − β2 of AdamW (β1 is 0.9)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm of τ to this (0: off)."""
    init_bias: float = 0.1
    """Mean of the initial τ (> 0: every node starts on)."""
    init_noise: float = 0.01
    """Std of the initial τ."""
    temperature: float = 1.0
    """Temperature of the sigmoid surrogate gradient."""
    margin_se: float = 1.0
    """The bisection accepts a size when the val loss plus this many standard errors (over
    prompts) reaches the target. The size is chosen where the val loss just crosses the target,
    so with 0 (the paper's exact criterion) the held-out test loss misses it about half the
    time; one standard error makes a circuit that meets it on val likely to meet it on test."""
    calibrate: bool = True
    """Fit a logit scale (16 LBFGS steps) before measuring a circuit's loss."""
    final_resid: bool = True
    """Also make the channels of the final residual stream (what the unembedding reads) nodes,
    masked and counted like the others. On by default because the paper's circuits have them:
    the released circuit data has a `final_resid` site, and the official viewer's k sums the
    nodes of every site it lists. They add nodes but no edges (the unembedding's outputs are
    logits, not nodes); off, the final residual is never ablated and so costs the circuit
    nothing."""
    n_train: int = 1024
    """Pairs of the train split the masks are trained on."""
    n_val: int = 256
    """Pairs of the val split the bisection and the search select on."""
    n_test: int = 256
    """Pairs of the test split the circuit is validated on."""
    curve_points: int = 16
    """Circuit sizes (log-spaced) of the loss-vs-k curve, besides the bisection's own."""
    seed: int = 0
    """Seeds the pairs, the τ initialisation and batch order (plus the trial number) and the
    search's sampler."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            0 < self.target_loss < CHANCE_LOSS,
            self,
            "target_loss",
            f"must be in (0, {CHANCE_LOSS:.4f}): at chance loss or above, no circuit is needed",
        )
        for name in ("budget", "steps", "batch_pairs", "n_train", "n_val", "n_test"):
            check(getattr(self, name) >= 1, self, name, "must be >= 1")
        for name in ("lr", "temperature"):
            check(getattr(self, name) > 0, self, name, "must be > 0")
        check(self.k_coef >= 0, self, "k_coef", "must be >= 0")
        check(0 < self.inv_beta2 < 1, self, "inv_beta2", "must be in (0, 1)")
        check(self.margin_se >= 0, self, "margin_se", "must be >= 0")
