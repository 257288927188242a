"""sparse_tf: weight-sparse transformers and the circuits inside them.

The core API:

    from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss

    model = GPT(GPTConfig(vocab_size=2048, n_ctx=256, n_layer=2, d_model=64))
    logits, cache = model.run_with_cache(tokens)          # cache["blocks.0.attn.hook_q"]
    opt = SparseOptimizer(model, OptimConfig(), SparsityConfig(l0=1 / 64), total_steps=1000)
"""

from sparse_tf.config import ConfigError
from sparse_tf.hooks import ActivationCache, HookPoint
from sparse_tf.model import GPT, GPTConfig, lm_loss
from sparse_tf.optim import OptimConfig, SparseOptimizer, StepStats, lr_schedule
from sparse_tf.sparsity import (
    AbsTopK,
    SparseWeight,
    SparsityConfig,
    abs_topk,
    count_nonzeros,
    l0_schedule,
    project_weights_,
    sharkfin,
)

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "AbsTopK",
    "ActivationCache",
    "ConfigError",
    "GPTConfig",
    "HookPoint",
    "OptimConfig",
    "SparseOptimizer",
    "SparseWeight",
    "SparsityConfig",
    "StepStats",
    "abs_topk",
    "count_nonzeros",
    "l0_schedule",
    "lm_loss",
    "lr_schedule",
    "project_weights_",
    "sharkfin",
]
