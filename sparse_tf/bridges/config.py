"""The bridges' config (`BridgeConfig`), without torch: `sparse-tf bridge --help` builds its
parser from it (`sparse_tf.bridges.bridge` and `sparse_tf.bridges` re-export it). It imports
no other module of `sparse_tf.bridges`, so every one of them may import it."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from sparse_tf.config import Config, check


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeConfig(Config):
    """The dense model to bridge to, the bridges' shape and the weights of the losses."""

    # `--dense DIR` on the command line (`--bridge.dense` also works): the flag the README uses.
    dense: Annotated[str | None, tyro.conf.arg(aliases=("--dense",))] = None
    """Folder of the dense Hugging Face GPT-2 (`save_pretrained`, with its tokenizer); required
    to train (`BridgedTrainConfig.objective`), None only while a config is being built."""
    encoder_afrac: float | None = 0.25
    """AbsTopK on each encoder's output: int(frac · d_sparse) entries kept; None or 0: off."""
    ce: float = 1.0
    """The sparse model's own next-token loss."""
    nmse: float = 1.0
    """Normalised MSE of the encoders and decoders (their mean over the sites, summed)."""
    kl_d2s: float = 1.0
    """Hybrid KL dense → sparse (mean over the sites)."""
    kl_s2d: float = 1.0
    """Hybrid KL sparse → dense (mean over the sites)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_afrac == 0.0:
            object.__setattr__(self, "encoder_afrac", None)  # one spelling of "off"
        if self.encoder_afrac is not None:
            check(0.0 < self.encoder_afrac <= 1.0, self, "encoder_afrac", "must be in (0, 1]")
        for name in ("ce", "nmse", "kl_d2s", "kl_s2d"):
            check(getattr(self, name) >= 0.0, self, name, "must be >= 0")
