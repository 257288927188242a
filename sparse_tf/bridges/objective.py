"""The bridged objective: what `sparse-tf bridge` trains, plugged into the ordinary trainer.

`BridgedTrainConfig` (`bridges.train_config`, torch-free) is a `TrainConfig` plus the bridges
(`bridge: BridgeConfig`, with the dense GPT-2 folder in `bridge.dense`); its objective,
`BridgedObjective`, loads the frozen dense model, wraps the sparse GPT in a `BridgedModel` (the
GPT + the bridges, which the optimizer trains and the checkpoints hold), and trains the
weighted sum of the model's next-token loss and the bridges' terms (`BridgeLosses.total`). It
logs every term per site (`bridge/{kind}` and `bridge/{kind}/{site}`), and at the end adds the
bridges' losses on validation windows to summary.json (`bridge_val`).

The objective takes the training config and its `BridgeConfig` apart, so that this module
need not import `bridges.train_config`, which imports it (when asked to train): no cycle.

Runs written before `BridgedTrainConfig` existed recorded their bridges the same way
(`"bridge"` in run.json's config), so they read as bridged runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparse_tf.bridges.bridge import LOSS_KINDS
from sparse_tf.bridges.config import BridgeConfig
from sparse_tf.bridges.dense import BridgeError, check_same_tokenizer, dense_tokenizer, load_gpt2
from sparse_tf.bridges.model import BridgedModel, bridge_validation
from sparse_tf.bridges.sites import site_name
from sparse_tf.data.pipeline import Data
from sparse_tf.data.tokens import EpochSampler, Windows
from sparse_tf.gpt2 import require_transformers
from sparse_tf.model import GPT
from sparse_tf.trainable import TrainableModel
from sparse_tf.training import Loss, MicroBatch, Objective, TrainConfig, TrainEnv


class BridgedObjective(Objective):
    """The sparse model's next-token loss plus the bridges' NMSE and hybrid KL terms."""

    shardable = False  # the bridges reach into every layer of a whole model

    def __init__(self, cfg: TrainConfig, bridge: BridgeConfig) -> None:
        """`cfg`: the run (its model a `GPTConfig`); `bridge`: its bridges, `bridge.dense` set
        (`BridgedTrainConfig.objective` checks both)."""
        require_transformers()  # the dense GPT-2: the [hf] extra, said before any data work
        self.cfg, self.bridge = cfg, bridge
        self._model: BridgedModel | None = None
        self._env: TrainEnv | None = None
        self._spreads: Tensor | None = None
        self._sums: Tensor | None = None  # per-site losses of the log window: [kinds, sites]

    @property
    def model(self) -> BridgedModel:
        if self._model is None:
            raise RuntimeError("BridgedObjective.setup has not run")
        return self._model

    @property
    def env(self) -> TrainEnv:
        if self._env is None:
            raise RuntimeError("BridgedObjective.setup has not run")
        return self._env

    def setup(
        self, model: TrainableModel, data: Data, env: TrainEnv, *, new_run: bool
    ) -> TrainableModel:
        """`model` with bridges to the dense GPT-2 of `bridge.dense`, which must read the same
        tokens (tokenizer, vocabulary size, context). A new run's bridges start at their
        targets' means over the first batch (whole on every rank)."""
        cfg = self.cfg
        assert isinstance(model, GPT)  # BridgedTrainConfig's model is a GPTConfig
        path = Path(self.bridge.dense)  # type: ignore[arg-type]  # checked by objective()
        dense = load_gpt2(path, env.device)
        check_same_tokenizer(dense_tokenizer(path), data.tokenizer, path)
        vocab, n_ctx = dense.config.vocab_size, dense.config.n_positions
        if vocab != cfg.model.vocab_size or n_ctx < cfg.model.n_ctx:
            raise BridgeError(
                f"--dense {path}: vocabulary {vocab} and context {n_ctx}; the sparse model needs "
                f"vocabulary {cfg.model.vocab_size} and context >= {cfg.model.n_ctx}"
            )
        bridged = BridgedModel(model, dense, self.bridge).to(env.device)
        if new_run:
            first = EpochSampler(len(data.train), cfg.seed).indices(0, cfg.batch_size)
            windows = data.train.get(first)[0]
            with env.autocast():
                bridged.init_biases(bridged.target_moments(windows, cfg.micro))
        self._model, self._env = bridged, env
        self._sums = torch.zeros(len(LOSS_KINDS), len(bridged.bridges), device=env.device)
        return bridged

    def start_batch(self, inputs: Tensor, micro: int) -> None:
        """The NMSE denominators of the whole global batch (a forward pass of both models
        without gradient over this rank's windows, summed over ranks), so that every
        micro-batch's NMSE is its exact share of the batch's: the result does not depend on
        the micro-batch size or the number of ranks."""
        with self.env.autocast():
            moments = self.model.target_moments(inputs, micro)
        if self.env.world.distributed:
            torch.distributed.all_reduce(moments)
        self._spreads = self.model.target_spreads(moments)

    def loss(self, net: nn.Module, batch: MicroBatch) -> Loss:
        parts = net(batch.inputs, targets=batch.targets, spreads=self._spreads)
        share = batch.window_share
        total = parts.total(self.bridge, ce_scale=batch.target_share, scale=share)
        self._sums += share * parts.per_site()  # type: ignore[operator]
        return Loss(total=total, lm=parts.ce * batch.target_share)

    def log_metrics(self, steps: int) -> dict[str, float]:
        """Mean bridge losses of the log window: per kind, and per kind and site."""
        sums = self._sums
        assert sums is not None
        if self.env.world.distributed:
            torch.distributed.all_reduce(sums)
        means = (sums / steps).tolist()  # [kind][site]
        sums.zero_()
        n_layer = self.cfg.model.n_layer
        out = {}
        for kind, values in zip(LOSS_KINDS, means, strict=True):
            out[f"bridge/{kind}"] = sum(values) / len(values)
            for site, value in enumerate(values):
                out[f"bridge/{kind}/{site_name(site, n_layer)}"] = value
        return out

    def validate(
        self, model: TrainableModel, windows: Windows, limit: int | None, batch_size: int
    ) -> tuple[dict[str, Any], str]:
        """The bridges' per-site losses on held-out windows."""
        assert isinstance(model, BridgedModel)
        table = bridge_validation(model, windows, limit, batch_size)
        return {"bridge_val": table.to_dict()}, table.format()

    def banner(self) -> str:
        sites = 2 * self.cfg.model.n_layer + 1
        return f"bridged to the dense GPT-2 in {self.bridge.dense} at {sites} sites"
