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
