"""sparse_tf: weight-sparse transformers and the circuits inside them.

The core API:

    from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss

    model = GPT(GPTConfig(vocab_size=2048, n_ctx=256, n_layer=2, d_model=64))
    logits, cache = model.run_with_cache(tokens)          # cache["blocks.0.attn.hook_q"]
    opt = SparseOptimizer(model, OptimConfig(), SparsityConfig(l0=1 / 64), total_steps=1000)

Training and trained models:

    from sparse_tf import RunOptions, load_model, load_tokenizer, preset, train

    result = train(preset("tiny-cpu"), RunOptions(out="runs/tiny-cpu"))
    model, tok = load_model(result.final), load_tokenizer(result.final)
    model = GPT.from_pretrained("owner/name")             # a Hub repo of such a folder

The 20 hand-built tasks of the paper, and scoring a model folder on them:

    from sparse_tf.tasks import TASKS, evaluate_task      # TASKS["single_double_quote"].pairs(...)
    from sparse_tf.evaluation import evaluate_model       # what `sparse-tf eval` prints

A task's minimal circuit (learned node masks, mean ablation, edges, circuit.html):

    from sparse_tf.pruning import prune_model             # what `sparse-tf prune` does
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparse_tf._version import __version__
from sparse_tf.lazy import lazy_exports

# The names below are imported when first used (PEP 562), not with the package: `sparse-tf
# --help` and every module that needs only a config or a file name start without importing
# torch (seconds on a small CPU). `from sparse_tf import GPT` works as before.
_LAZY = {
    "CheckpointError": "sparse_tf.checkpoint",
    "export_model": "sparse_tf.checkpoint",
    "load_model": "sparse_tf.checkpoint",
    "ConfigError": "sparse_tf.config",
    "DataConfig": "sparse_tf.data",
    "load_tokenizer": "sparse_tf.data",
    "SparseTFError": "sparse_tf.errors",
    "ActivationCache": "sparse_tf.hooks",
    "HookPoint": "sparse_tf.hooks",
    # GPT through sparse_tf.hub, which registers GPT.from_pretrained / push_to_hub with the
    # model when imported (the model layer cannot import the checkpoint code they call).
    "GPT": "sparse_tf.hub",
    "HubError": "sparse_tf.hub",
    "GPTConfig": "sparse_tf.model",
    "lm_loss": "sparse_tf.model",
    "OptimConfig": "sparse_tf.optim",
    "SparseOptimizer": "sparse_tf.optim",
    "StepStats": "sparse_tf.optim",
    "lr_schedule": "sparse_tf.optim",
    "preset": "sparse_tf.presets",
    "AbsTopK": "sparse_tf.sparsity",
    "SparseWeight": "sparse_tf.sparsity",
    "SparsityConfig": "sparse_tf.sparsity",
    "abs_topk": "sparse_tf.sparsity",
    "count_nonzeros": "sparse_tf.sparsity",
    "l0_schedule": "sparse_tf.sparsity",
    "project_weights_": "sparse_tf.sparsity",
    "sharkfin": "sparse_tf.sparsity",
    "RunOptions": "sparse_tf.training",
    "TrainConfig": "sparse_tf.training",
    "TrainingError": "sparse_tf.training",
    "TrainResult": "sparse_tf.training",
    "train": "sparse_tf.training",
}

if TYPE_CHECKING:
    from sparse_tf.checkpoint import CheckpointError, export_model, load_model
    from sparse_tf.config import ConfigError
    from sparse_tf.data import DataConfig, load_tokenizer
    from sparse_tf.errors import SparseTFError
    from sparse_tf.hooks import ActivationCache, HookPoint
    from sparse_tf.hub import HubError
    from sparse_tf.model import GPT, GPTConfig, lm_loss
    from sparse_tf.optim import OptimConfig, SparseOptimizer, StepStats, lr_schedule
    from sparse_tf.presets import preset
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
    from sparse_tf.training import RunOptions, TrainConfig, TrainingError, TrainResult, train


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "GPT",
    "AbsTopK",
    "ActivationCache",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "GPTConfig",
    "HookPoint",
    "HubError",
    "OptimConfig",
    "RunOptions",
    "SparseOptimizer",
    "SparseTFError",
    "SparseWeight",
    "SparsityConfig",
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "__version__",
    "abs_topk",
    "count_nonzeros",
    "export_model",
    "l0_schedule",
    "lm_loss",
    "load_model",
    "load_tokenizer",
    "lr_schedule",
    "preset",
    "project_weights_",
    "sharkfin",
    "train",
]
