"""Training a (weight-sparse) GPT end to end: data, objective, logging, checkpoints, export.

    from sparse_tf.presets import preset
    from sparse_tf.training import RunOptions, train

    result = train(preset("tiny-cpu"), RunOptions(out="runs/tiny-cpu"))
    model = sparse_tf.load_model(result.final)

`config`: `TrainConfig` fixes the trajectory (model, sparsity, optimizer, data, batch, steps,
seed, objective): a resumed run must match it exactly. `RunOptions` are how this particular
process runs (where, on which device, how often it logs or saves) and may change between
resumes. `objective`: what the loop minimises (`Objective`; the language-model loss, or one a
config subclass brings, such as `sparse_tf.bridges.BridgedTrainConfig`). `run_folder`: the
--out folder and its run.json. `loop`: `train`. `validation`: the validation loss.
"""

from typing import TYPE_CHECKING

from sparse_tf.lazy import lazy_exports

_LAZY: dict[str, str] = {
    "RunOptions": "sparse_tf.training.config",
    "TrainConfig": "sparse_tf.training.config",
    "TrainingError": "sparse_tf.training.config",
    "TrainingStopped": "sparse_tf.training.config",
    "TrainResult": "sparse_tf.training.loop",
    "train": "sparse_tf.training.loop",
    "LanguageModelObjective": "sparse_tf.training.objective",
    "Loss": "sparse_tf.training.objective",
    "MicroBatch": "sparse_tf.training.objective",
    "Objective": "sparse_tf.training.objective",
    "TrainEnv": "sparse_tf.training.objective",
    "config_diff": "sparse_tf.training.run_folder",
    "validation_loss": "sparse_tf.training.validation",
}
"""What this package exports, and the module of each: imported on first use, so that its
torch-free modules (the configs that `--help` reads) import no torch."""

if TYPE_CHECKING:
    from sparse_tf.training.config import RunOptions, TrainConfig, TrainingError, TrainingStopped
    from sparse_tf.training.loop import TrainResult, train
    from sparse_tf.training.objective import (
        LanguageModelObjective,
        Loss,
        MicroBatch,
        Objective,
        TrainEnv,
    )
    from sparse_tf.training.run_folder import config_diff
    from sparse_tf.training.validation import validation_loss


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "LanguageModelObjective",
    "Loss",
    "MicroBatch",
    "Objective",
    "RunOptions",
    "TrainConfig",
    "TrainEnv",
    "TrainResult",
    "TrainingError",
    "TrainingStopped",
    "config_diff",
    "train",
    "validation_loss",
]
