"""What the training loop minimises: an `Objective` turns a micro-batch into the loss that is
backpropagated, and may own more than the model (extra trainable modules, a frozen partner
model), its own metrics, its own end-of-run validation and a line of the run's banner.

The loop (`sparse_tf.training.loop`) knows only this interface. The language-model loss is
`LanguageModelObjective`; the bridged objective (a sparse GPT trained against a frozen dense
GPT-2, `sparse-tf bridge`) is `sparse_tf.bridges.objective.BridgedObjective`. A training config
names its objective (`TrainConfig.objective()`), so a new objective comes with a config class
of its own and needs no change to the loop.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from sparse_tf.data.pipeline import Data
from sparse_tf.data.tokens import Windows
from sparse_tf.model import target_loss
from sparse_tf.parallel import launch
from sparse_tf.trainable import TrainableModel


@dataclasses.dataclass(frozen=True)
class TrainEnv:
    """Where a run computes: every rank has its own `device`; bf16 autocast when `amp`."""

    device: torch.device
    world: launch.World
    amp: bool

    def autocast(self, *, cache: bool = True) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on a GPU (`cache` off under a CUDA graph's capture, as torch requires:
        the cached casts would outlive the capture)."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """One forward/backward pass's windows, and its share of the optimizer step's batch.

    The global batch's mean token loss is the sum over micro-batches (and ranks) of each one's
    summed token loss / `batch_targets`; terms averaged over windows instead weigh a
    micro-batch by `window_share`. Either way the step's gradient does not depend on the
    micro-batch size or the number of ranks."""

    inputs: Tensor
    """[b, T] tokens, on the device."""
    targets: Tensor
    """[b, T] next tokens, on the device; -100: no target."""
    batch_targets: int
    """Targets in the whole global batch (all ranks)."""
    target_share: float
    """This micro-batch's share of those targets."""
    window_share: float
    """This micro-batch's share of the global batch's windows."""


@dataclasses.dataclass(frozen=True)
class Loss:
    """A micro-batch's loss terms."""

    total: Tensor
    """What is backpropagated: this micro-batch's share of the batch's objective."""
    lm: Tensor
    """Its share of the batch's mean next-token loss (logged as train/loss)."""


class Objective(abc.ABC):
    """The loss of a training run, and everything it owns besides the model.

    Called by every rank, in this order: `setup` once; per optimizer step `start_batch`,
    then `loss` per micro-batch; `log_metrics` at each log step; at the end `validate`
    (rank 0 only)."""

    shardable: bool = True
    """Whether FSDP may shard the model it trains (`--dist fsdp`)."""
    graphable: bool = False
    """Whether `loss` can be captured as a CUDA graph (`--cuda-graphs`): it uses only the
    micro-batch's inputs, targets and batch_targets (which it may be handed as a 0-d tensor),
    and keeps no state between calls."""

    def setup(
        self, model: TrainableModel, data: Data, env: TrainEnv, *, new_run: bool
    ) -> TrainableModel:
        """The model the optimizer trains and the checkpoints hold: `model` itself, or a
        module around it with the objective's own trainable parts (on `env.device`).
        `new_run`: no checkpoint will be loaded into it (initialise what needs data)."""
        return model

    def start_batch(self, inputs: Tensor, micro: int) -> None:  # noqa: B027 - optional hook
        """Before the micro-batches of an optimizer step: this rank's windows [B, T] of the
        global batch (on the CPU), which it runs `micro` at a time."""

    @abc.abstractmethod
    def loss(self, net: nn.Module, batch: MicroBatch) -> Loss:
        """The loss terms of one micro-batch; `net` is the trained model (wrapped for DDP or
        FSDP: call it, do not reach into it)."""

    def log_metrics(self, steps: int) -> dict[str, float]:
        """The objective's own metrics over the `steps` steps since the last call (names as
        'group/name'); every rank calls it (may all-reduce)."""
        return {}

    def validate(
        self, model: TrainableModel, windows: Windows, limit: int | None, batch_size: int
    ) -> tuple[dict[str, Any], str] | None:
        """At the end, on rank 0, in eval mode: (summary.json entries, a message for the log)
        about `limit` evenly spread validation windows (all when None); None: nothing beyond
        the validation loss."""
        return None

    def banner(self) -> str | None:
        """A line for the run's banner, when there is more to say than the model and data."""
        return None


class LanguageModelObjective(Objective):
    """The model's mean next-token cross-entropy over the batch's targets."""

    graphable = True

    def loss(self, net: nn.Module, batch: MicroBatch) -> Loss:
        loss = target_loss(net(batch.inputs), batch.targets, reduction="sum") / batch.batch_targets
        return Loss(total=loss, lm=loss)
