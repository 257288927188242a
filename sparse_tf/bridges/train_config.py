"""What `sparse-tf bridge` trains (`BridgedTrainConfig`), without torch: its `--help` and
`--print-config` build the parser from it (`sparse_tf.bridges` re-exports it).

Apart from `bridges.config` (`BridgeConfig`, which the torch modules of `sparse_tf.bridges` use
too) it imports its objective only when asked to train: `bridges.objective` imports no module
that imports this one, so the two do not form a cycle.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sparse_tf.bridges.config import BridgeConfig
from sparse_tf.config import check
from sparse_tf.model_config import GPTConfig
from sparse_tf.training.config import TrainConfig

if TYPE_CHECKING:
    from sparse_tf.bridges.objective import BridgedObjective


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgedTrainConfig(TrainConfig):
    """A training run of a sparse GPT with bridges to a frozen dense GPT-2 (`sparse-tf
    bridge`); the loss adds the bridges' terms to the model's own."""

    bridge: BridgeConfig = BridgeConfig()
    """The dense model (`bridge.dense`, required to train), the bridges' shape, the weights of
    the loss terms."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.model, GPTConfig), self, "bridge", "bridges a sparse_tf GPT only")

    @classmethod
    def bridging(cls, cfg: TrainConfig, bridge: BridgeConfig) -> BridgedTrainConfig:
        """`cfg` (a preset, say) trained with `bridge`."""
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
        return cls(**fields, bridge=bridge)

    def objective(self) -> BridgedObjective:
        """The bridged objective (imported here, torch and all: only a run needs it)."""
        check(
            self.bridge.dense is not None,
            self,
            "bridge",
            "needs bridge.dense: the dense GPT-2 folder to bridge to",
        )
        from sparse_tf.bridges.objective import BridgedObjective

        return BridgedObjective(self, self.bridge)
