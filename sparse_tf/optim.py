"""The sparse optimizer step of the paper's recipe, as one object the training loop calls.

`SparseOptimizer.step()`, after `loss.backward()`, does in this order (README, "The recipe"):

1. divide every gradient by the global gradient RMS (normalised to 1, not clipped); a model
   may name groups normalised separately (`grad_rms_groups()`: a bridged model's GPT and
   bridges);
2. Adam (β 0.9/0.95, ε 0.1; moments stay dense so any weight can re-enter) at
   LR = base · warmup/decay(step) · sharkfin(step);
3. project every sparse matrix to its top-magnitude entries at the scheduled L0;
4. decoupled weight decay *after* the projection, p ← p − wd · LR · p, on ≥2-D weights except
   the bigram table (biases, norm gains and sink logits are never decayed).

A dense baseline is the same object with `sparsity=None`: no projection, no sharkfin. On an
FSDP-sharded model (`sparse_tf.parallel.fsdp`) every step works on this rank's shards; the
gradient RMS and the projection are exact over all ranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sparse_tf.optim_config import OptimConfig
from sparse_tf.parallel.fsdp import is_sharded, local, row_shard_group
from sparse_tf.sparsity import (
    SparsityConfig,
    l0_at_progress,
    l0_schedule,
    mark_sparse,
    project_weights_,
    sharkfin,
)
from sparse_tf.trainable import TrainableModel


def lr_schedule(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Warmup/decay factor in (0, 1] of step `step` (0-based), before sharkfin.

    Linear warmup to 1 over the first int(warmup_frac · total) steps, then linear decay that
    would reach 0 at step `total_steps` (the last step still moves the weights).
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step={step} is outside [0, total_steps={total_steps})")
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return (step + (0 if cfg.warmup_clock == "before_step" else 1)) / warmup
    if not cfg.lr_decay:
        return 1.0
    return (total_steps - step) / (total_steps - warmup)


@dataclasses.dataclass(frozen=True)
class StepStats:
    """What one optimizer step did, for logging.

    `grad_rms` stays a 0-d device tensor so that logging decides when to synchronise.
    """

    step: int
    """Index of the step just taken (0-based)."""
    lr: float
    """Learning rate the step used."""
    l0: float
    """Block-matrix L0 fraction the weights were projected to."""
    nonzeros: dict[str, int]
    """Sparse matrix name → entries kept (numel when dense)."""
    grad_rms: Tensor
    """Global gradient RMS before normalisation."""


class SparseOptimizer:
    """Gradient normalisation, Adam, L0 projection and decoupled decay, once per step.

    Usage:
        opt = SparseOptimizer(model, OptimConfig(), SparsityConfig(l0=1 / 64), total_steps)
        for step in range(total_steps):
            lm_loss(model(tokens), tokens).backward()
            stats = opt.step()
            opt.zero_grad()

    If the schedule starts below L0 = 1 (no anneal), the weights are projected on construction
    so that the first forward pass already runs the sparse model.
    """

    def __init__(
        self,
        model: TrainableModel,
        cfg: OptimConfig,
        sparsity: SparsityConfig | None,
        total_steps: int,
        *,
        eot_id: int | None = None,
    ) -> None:
        """`eot_id`: the tokenizer's <|endoftext|> id, needed with `train_eot_bigram=False`."""
        if total_steps < 1:
            raise ValueError(f"SparseOptimizer: total_steps={total_steps} must be >= 1")
        self.model, self.cfg, self.sparsity, self.total_steps = model, cfg, sparsity, total_steps
        self.step_count = 0
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.param_names = [n for n, _ in named]  # Adam's state index i is param_names[i]
        # The official rule: every ≥2-D weight decays, except the bigram table.
        # (`bigram` at any depth: a bridged model holds the GPT as `sparse`.)
        self._decayed = [p for n, p in named if p.dim() >= 2 and n.rsplit(".", 1)[-1] != "bigram"]
        self._frozen_rows: list[tuple[Tensor, int]] = []  # (parameter, row) kept at its init
        if not cfg.train_eot_bigram:
            if eot_id is None:
                raise ValueError("SparseOptimizer: train_eot_bigram=False needs eot_id")
            if is_sharded(model):
                raise ValueError("SparseOptimizer: train_eot_bigram=False is not supported "
                                 "with FSDP (a row of a sharded table)")  # fmt: skip
            self._frozen_rows = [(p, eot_id) for n, p in named if n.rsplit(".", 1)[-1] == "bigram"]
        self._dense_counts = {w.name: w.param.numel() for w in model.sparse_weights()}
        # Parameters whose gradient RMS is normalised together: the whole model, unless it
        # names groups (a bridged model: the sparse GPT and the bridges, whose gradients can
        # differ in scale by orders of magnitude, each normalised on its own).
        prefixes = model.grad_rms_groups()
        self._rms_groups = [
            [p for name, p in named if name.startswith(prefix)] for prefix in prefixes
        ]
        if sum(map(len, self._rms_groups)) != len(named):
            raise ValueError(f"grad_rms_groups {prefixes} do not cover each parameter once")
        # FSDP: the parameters are row shards (DTensors); the gradient norm sums over ranks.
        self._shard_group = row_shard_group(self.params) if is_sharded(model) else None
        fused = all(p.is_cuda for p in self.params)
        self.adam = torch.optim.Adam(
            self.params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=0.0,
            fused=fused or None,
        )
        if sparsity is not None and (l0 := l0_at_progress(0.0, sparsity)) < 1.0:
            project_weights_(model, l0, sparsity)

    def lr_at(self, step: int) -> float:
        """Learning rate of step `step`: base · warmup/decay · sharkfin."""
        lr = self.cfg.lr * lr_schedule(step, self.total_steps, self.cfg)
        if self.sparsity is not None:
            lr *= sharkfin(step, self.total_steps, self.sparsity)
        return lr

    def l0_at(self, step: int) -> float:
        """Block-matrix L0 that step `step` projects to (1.0 for a dense run)."""
        if self.sparsity is None:
            return 1.0
        return l0_schedule(step, self.total_steps, self.sparsity)

    @torch.no_grad()
    def step(self) -> StepStats:
        """Take one optimizer step with the gradients in `.grad`; see the module docstring."""
        step = self.step_count
        if step >= self.total_steps:
            raise RuntimeError(f"all {self.total_steps} scheduled steps have been taken")
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            raise RuntimeError(
                "SparseOptimizer.step() called with no gradients; call backward first"
            )
        for p, row in self._frozen_rows:  # zero before the RMS: as if it had no gradient
            if p.grad is not None:
                p.grad[row] = 0
        n = sum(g.numel() for g in grads)  # global sizes, also of FSDP shards
        shards = [local(g) for g in grads]  # this rank's part (all of it unless sharded)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(shards)))
        if self._shard_group is not None:  # the norm over all ranks' shards
            sum_sq = norm.square()
            dist.all_reduce(sum_sq, group=self._shard_group)
            norm = sum_sq.sqrt()
        grad_rms = norm / n**0.5
        if self.cfg.grad_rms is not None and len(self._rms_groups) == 1:
            torch._foreach_mul_(shards, self.cfg.grad_rms / (grad_rms + 1e-5))
        elif self.cfg.grad_rms is not None:  # each group to the target RMS on its own
            for members in self._rms_groups:
                group = [local(p.grad) for p in members if p.grad is not None]
                if not group:
                    continue
                sum_sq = torch.stack(torch._foreach_norm(group)).square().sum()
                if self._shard_group is not None:
                    dist.all_reduce(sum_sq, group=self._shard_group)
                size = sum(p.grad.numel() for p in members if p.grad is not None)
                rms = sum_sq.sqrt() / size**0.5
                torch._foreach_mul_(group, self.cfg.grad_rms / (rms + 1e-5))

        lr, l0 = self.lr_at(step), self.l0_at(step)
        for group in self.adam.param_groups:
            group["lr"] = lr
        self.adam.step()

        if self.sparsity is not None and l0 < 1.0:
            nonzeros = project_weights_(self.model, l0, self.sparsity)
        else:
            nonzeros = dict(self._dense_counts)
        if self.cfg.weight_decay > 0:
            torch._foreach_mul_([local(p) for p in self._decayed], 1.0 - self.cfg.weight_decay * lr)
            if self.sparsity is not None and l0 < 1.0:
                mark_sparse(self.model, nonzeros)  # scaled in place, zeros kept

        self.step_count += 1
        return StepStats(step=step, lr=lr, l0=l0, nonzeros=nonzeros, grad_rms=grad_rms)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients, or zero them in place (`set_to_none=False`: a CUDA graph's
        replays accumulate into these very tensors)."""
        self.adam.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Adam moments and the step counter; the schedules are functions of these."""
        return {
            "step": self.step_count,
            "total_steps": self.total_steps,
            "adam": self.adam.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["total_steps"] != self.total_steps:
            raise ValueError(
                f"optimizer state was saved for total_steps={state['total_steps']}, this run "
                f"has {self.total_steps}: the LR and L0 schedules would differ"
            )
        self.adam.load_state_dict(state["adam"])
        self.step_count = state["step"]
