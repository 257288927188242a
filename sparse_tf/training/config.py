"""What a training run is (`TrainConfig`) and how this process runs it (`RunOptions`).

`TrainConfig` fixes the trajectory (model, sparsity, optimizer, data, batch, steps, seed) and
the objective the loop minimises: a resumed run must match it exactly. `RunOptions` are how
this particular process runs (where, on which device, how often it logs or saves) and may
change between resumes. `FOLDER_FLAGS` and `saved_config` are what the command line needs of
a run folder before it parses (`run_folder` re-exports them).

No torch: `sparse-tf train --help` builds its parser from this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from sparse_tf.config import Config, ConfigError, check
from sparse_tf.data.config import DataConfig
from sparse_tf.errors import SparseTFError
from sparse_tf.extras import install_hint, installed
from sparse_tf.filenames import RUN_FILE
from sparse_tf.gpt2_config import GPT2Config
from sparse_tf.io import ProgressMode, read_json
from sparse_tf.log import WandbMode
from sparse_tf.model_config import ModelConfig
from sparse_tf.optim_config import OptimConfig
from sparse_tf.sparsity_config import SparsityConfig

if TYPE_CHECKING:
    from sparse_tf.training.objective import Objective

DistMode = Literal["ddp", "fsdp"]
CompileMode = Literal["none", "default"]

_LEGACY_BRIDGE_KEY = "bridge"
"""Configs written before bridged runs had their own config class carry a `bridge` entry in
every run; `TrainConfig.from_dict` reads that form (see there)."""


class TrainingError(SparseTFError):
    """Training cannot start or continue (output folder, resume, diverged loss)."""


class TrainingStopped(TrainingError):
    """A stop signal (Ctrl-C, SIGTERM; or one sent to another rank) ended the run after a step,
    with a complete checkpoint: continue it with --resume. `signal` is the signal's name (None:
    it went to another rank)."""

    def __init__(self, signal: str | None, step: int, checkpoint: str) -> None:
        super().__init__(
            f"stopped by {signal or 'a signal to another rank'} after step {step}; checkpoint "
            f"{checkpoint} is complete: continue with --resume"
        )
        self.signal, self.step, self.checkpoint = signal, step, checkpoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Everything that determines a training run's result. Presets are instances of this.

    It trains the language-model objective; a subclass that trains another objective (the
    bridged runs of `sparse_tf.bridges.objective`) adds its fields and overrides
    `objective()`."""

    model: ModelConfig
    """The weight-sparse GPT (`GPTConfig`) or a dense Hugging Face GPT-2 (`GPT2Config`)."""
    sparsity: SparsityConfig
    """Weight sparsity; l0 = 1 trains dense (the dense twins of the presets)."""
    optim: OptimConfig = OptimConfig()
    """Adam: the learning rate and its schedule (warmup, decay), weight decay, gradient RMS
    normalisation."""
    data: DataConfig = DataConfig()
    """The corpus, its tokenizer and its split into training and validation documents."""
    max_steps: int
    """Optimizer steps of the whole run; the LR and L0 schedules span them."""
    batch_size: int
    """Sequences of model.n_ctx tokens per optimizer step."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass (gradient accumulation); None: the whole batch."""
    seed: int = 0
    """Seeds the initialisation and the data order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_steps >= 1, self, "max_steps", "must be >= 1")
        if isinstance(self.model, GPT2Config):
            check(self.dense, self, "sparsity", "l0 must be 1: a GPT-2 model trains dense")
        check(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            self,
            "micro_batch_size",
            "must be >= 1 (or unset: the whole batch)",
        )
        micro = self.micro
        check(
            1 <= micro <= self.batch_size and self.batch_size % micro == 0,
            self,
            "micro_batch_size",
            f"must divide batch_size={self.batch_size}",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """`Config.from_dict`, reading configs written before bridged runs had their own
        config class: those carried `"bridge": {"dense": null, ...}` in every plain run, which
        meant no bridges, so it is dropped. One with a dense model set is a bridged run's,
        which this class cannot train: read it with `sparse_tf.bridges.BridgedTrainConfig`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if isinstance(data, dict) and _LEGACY_BRIDGE_KEY not in fields:
            bridge = data.get(_LEGACY_BRIDGE_KEY)
            if isinstance(bridge, dict) and bridge.get("dense") is not None:
                where = f"{source}: " if source else ""
                raise ConfigError(
                    f"{where}a bridged run's config (bridge.dense={bridge['dense']!r}), not a "
                    f"plain {cls.__name__}; continue it with `sparse-tf bridge`"
                )
            if isinstance(bridge, dict):
                data = {k: v for k, v in data.items() if k != _LEGACY_BRIDGE_KEY}
        return super().from_dict(data, source)

    def objective(self) -> Objective:
        """What the loop minimises: the model's mean next-token loss."""
        from sparse_tf.training.objective import LanguageModelObjective  # torch: only to train

        return LanguageModelObjective()

    @property
    def micro(self) -> int:
        return self.batch_size if self.micro_batch_size is None else self.micro_batch_size

    @property
    def dense(self) -> bool:
        return self.sparsity.l0 >= 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions(Config):
    """How this process runs a training config; free to change when resuming."""

    out: str = "runs/tiny-cpu"
    """Run directory: run.json, metrics.jsonl, step-N/ checkpoints, final/ export, wandb/."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint."""
    overwrite: bool = False
    """Replace the run in --out (its checkpoints and export are deleted)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    wandb: WandbMode = "auto"
    """Weights & Biases: 'offline' writes OUT/wandb (sync later), 'online', 'disabled', or
    'auto': offline where wandb is installed (the [wandb] extra), else disabled (one line says
    so; metrics.jsonl is written either way)."""
    wandb_project: str = "sparse_tf"
    log_every: int = 10
    """Log training metrics every N steps."""
    eval_every: int = 100
    """Validation loss every N steps (on eval_windows windows); 0: only at the end, where the
    whole validation split is always evaluated."""
    eval_windows: int | None = 256
    """Validation windows of the periodic evaluation (spread evenly); None: all of them."""
    ckpt_every: int = 250
    """Write OUT/step-N every N steps (and at the end)."""
    keep_last: int = 2
    """Checkpoints to keep; older ones are deleted once a newer one is complete."""
    progress: ProgressMode = "auto"
    """'bar', 'lines', 'none', or 'auto' (a bar on a terminal, lines otherwise)."""
    dist: DistMode = "ddp"
    """With several ranks (torchrun): 'ddp' keeps a whole model on every rank and averages
    gradients; 'fsdp' shards parameters, gradients and Adam state over the ranks (FSDP2) for
    models too large to replicate. Same global batch and result either way."""
    compile: CompileMode = "none"
    """'default': torch.compile the model's forward and backward (Inductor fuses the elementwise
    work around the library's kernels, which enter the graph as opaque operators). The
    optimizer and validation stay eager. Same result as 'none' within rounding. (torch's
    'reduce-overhead' mode is not offered: its CUDA graphs, replayed across this loop's
    micro-batches, overwrote tensors the backward still needed; `cuda_graphs` is this loop's
    own capture.) Measured speeds: benchmarks/RESULTS.md."""
    cuda_graphs: bool = False
    """Replay each micro-batch's forward and backward as one CUDA graph, captured at the first
    step (CUDA, one process, no --compile, the language-model objective): the eager kernels
    without the host's launch time between them, which the sparse model's many small kernels
    otherwise pay. The sparse products run where they would eagerly, their formats rebuilt before
    each replay (a change of plan during the L0 anneal captures the micro-batch again). Same
    result as eager within rounding. Measured speeds: benchmarks/RESULTS.md."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.out), self, "out", "must name a folder")
        if self.cuda_graphs:
            check(self.compile == "none", self, "cuda_graphs", "cannot be combined with --compile")
        wandb_ok = self.wandb in ("auto", "disabled") or installed("wandb")
        check(wandb_ok, self, "wandb", install_hint("wandb"))
        check(not (self.resume and self.overwrite), self, "overwrite", "excludes --resume")
        check(self.log_every >= 1, self, "log_every", "must be >= 1")
        check(self.eval_every >= 0, self, "eval_every", "must be >= 0")
        check(self.eval_windows is None or self.eval_windows >= 1, self, "eval_windows", ">= 1")
        check(self.ckpt_every >= 1, self, "ckpt_every", "must be >= 1")
        check(self.keep_last >= 1, self, "keep_last", "must be >= 1")


FOLDER_FLAGS = {
    "resume": "continues the run in --out: a command-line flag (--resume), not a config value",
    "overwrite": "replaces the run in --out: a command-line flag (--overwrite), not a config value",
}
"""The run options that say what to do with the folder, not how to train: never in a config
file (a file that resumes or overwrites whatever --out holds would do so on every use), and
so not in config.toml; each -> why, the error a file setting it gets. Here rather than in
`run_folder` (which imports torch) because `sparse-tf train --help` needs it."""


def saved_config(out: Path, config_type: type[TrainConfig]) -> TrainConfig | None:
    """The config the run in `out` was started with, read as `config_type` (None when `out`
    holds no run.json: `train` says so). It reads run.json alone, without torch: `sparse-tf
    train --resume` takes its defaults from it before parsing the other flags (`--help` and
    `--print-config` too)."""
    file = out / RUN_FILE
    if not file.is_file():
        return None
    try:
        return config_type.from_dict(read_json(file)["config"], source=str(file))
    except (ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"--resume: {file} is unreadable ({e})") from None
