"""The paper's task loss and the metrics reported with it.

For every prompt, the logits of its two candidates at its last position are compared: the loss
is the binary cross-entropy of the correct one (log-softmax over the two), averaged over both
members of every pair. The official code sums the two members of a pair, so its stored losses
are twice these. Chance is ln 2 = 0.693, accuracy 0.5 and margin 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.data.tokenizer import eot_id
from sparse_tf.model import GPT
from sparse_tf.tasks.base import PairSource, Split
from sparse_tf.tasks.encoding import TaskBatch, batches, encode_pairs, truncated

Model = Callable[[Tensor], Tensor]
"""Anything that maps tokens [M, T] to next-token logits [M, T, vocab], e.g. a `GPT`."""


def candidate_logits(logits: Tensor, batch: TaskBatch) -> Tensor:
    """[M, 2]: the target's and the alternative's logit at each prompt's last position, from a
    model's logits [M, T, vocab], or from logits already taken there [M, vocab]."""
    if logits.dim() == 3:
        logits = logits[torch.arange(len(batch.lengths), device=logits.device), batch.lengths - 1]
    return torch.stack(
        (
            logits.gather(1, batch.targets[:, None]).squeeze(1),
            logits.gather(1, batch.alternatives[:, None]).squeeze(1),
        ),
        dim=1,
    ).float()


def last_logits(model: Model, batch: TaskBatch) -> Tensor:
    """The model's logits at each prompt's last position: [M, vocab] from a `GPT` (which
    computes only those), [M, T, vocab] from any other model (`candidate_logits` takes both)."""
    if isinstance(model, GPT):
        return model(batch.tokens, positions=batch.lengths - 1)
    return model(batch.tokens)


def contrast_loss(pair_logits: Tensor) -> Tensor:
    """Mean binary cross-entropy of the correct candidate; `pair_logits` [M, 2] is
    (target, alternative) per prompt. Differentiable: the pruning objective."""
    return -F.log_softmax(pair_logits, dim=-1)[:, 0].mean()


@dataclass(frozen=True)
class TaskScore:
    task: str
    pairs: int
    loss: float
    """Mean binary cross-entropy per prompt (chance: 0.693)."""
    accuracy: float
    """Prompts whose target logit beats the alternative's (a tie counts half)."""
    margin: float
    """Mean target minus alternative logit."""
    pair_accuracy: float
    """Pairs whose two members are both right."""
    truncated: int
    """Prompts longer than the model's context, which lost their first tokens."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(task: str, pair_logits: Tensor, n_truncated: int = 0) -> TaskScore:
    """Metrics from all [2N, 2] candidate logits of N pairs (rows a0, b0, a1, b1, ...)."""
    margin = (pair_logits[:, 0] - pair_logits[:, 1]).double()
    right = (margin > 0).double() + 0.5 * (margin == 0).double()
    both = (margin.view(-1, 2) > 0).all(dim=1).double()
    return TaskScore(
        task=task,
        pairs=len(both),
        loss=float(contrast_loss(pair_logits.double())),
        accuracy=float(right.mean()),
        margin=float(margin.mean()),
        pair_accuracy=float(both.mean()),
        truncated=n_truncated,
    )


@torch.no_grad()
def evaluate_task(
    model: Model,
    tok: Tokenizer,
    task: PairSource,
    *,
    n: int = 100,
    seed: int = 0,
    split: Split = "test",
    n_ctx: int | None = None,
    pairs_per_batch: int = 32,
    device: torch.device | str | None = None,
) -> TaskScore:
    """Score `model` on `n` pairs of `task` (raises `TaskTokenError` if the tokenizer cannot
    express the task). `n_ctx` and `device` default to the model's."""
    n_ctx = n_ctx if n_ctx is not None else model.cfg.n_ctx  # type: ignore[attr-defined]
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    encoded = encode_pairs(task.pairs(n, seed, split), tok)
    rows = [
        candidate_logits(last_logits(model, b), b)
        for b in (b.to(device) for b in batches(encoded, pairs_per_batch, n_ctx, eot_id(tok)))
    ]
    return score(task.name, torch.cat(rows).cpu(), truncated(encoded, n_ctx))


def mean_scores(scores: Sequence[TaskScore]) -> dict[str, float]:
    """Unweighted means over tasks of loss, accuracy, margin and pair accuracy."""
    keys = ("loss", "accuracy", "margin", "pair_accuracy")
    return {k: sum(getattr(s, k) for s in scores) / len(scores) for k in keys} if scores else {}
