"""Hand-built tasks: the paper's 20 Python contrast tasks, their tokens and their metrics.

    from sparse_tf.tasks import TASKS, evaluate_task, get_task

    task = get_task("single_double_quote")
    pair = task.pairs(1, seed=0, split="train")[0]      # pair.a.context, pair.a.target, ...
    result = evaluate_task(model, tok, task, n=100)      # loss, accuracy, margin

`TASKS` maps each name to a `Task`; `task_tokens()` are the strings the default tokenizer
reserves so that every candidate is a single token. `read_pairs_file(path)` reads your own
task's pairs from a JSON-lines file (`PairsFile`, usable wherever a `Task` is scored or pruned).
"""

from typing import TYPE_CHECKING

from sparse_tf.lazy import lazy_exports
from sparse_tf.tasks.base import (
    CHANCE_LOSS,
    SPLITS,
    Example,
    Pair,
    PairSource,
    Split,
    Task,
    TaskError,
    load_pairs,
    parse_pair,
    save_pairs,
)
from sparse_tf.tasks.catalog import TASKS

_LAZY: dict[str, str] = {
    "EncodedPairs": "sparse_tf.tasks.encoding",
    "TaskBatch": "sparse_tf.tasks.encoding",
    "TaskTokenError": "sparse_tf.tasks.encoding",
    "batches": "sparse_tf.tasks.encoding",
    "encode_pairs": "sparse_tf.tasks.encoding",
    "truncated": "sparse_tf.tasks.encoding",
    "PairsFile": "sparse_tf.tasks.files",
    "read_pairs_file": "sparse_tf.tasks.files",
    "TaskScore": "sparse_tf.tasks.metrics",
    "candidate_logits": "sparse_tf.tasks.metrics",
    "contrast_loss": "sparse_tf.tasks.metrics",
    "evaluate_task": "sparse_tf.tasks.metrics",
    "last_logits": "sparse_tf.tasks.metrics",
    "mean_scores": "sparse_tf.tasks.metrics",
    "score": "sparse_tf.tasks.metrics",
}
"""The exports of the modules that need torch or tokenizers (encoding, scoring, pairs files),
imported on first use: the tasks themselves (`base`, `catalog`) import neither, so that a
command's `--help` may read them."""

if TYPE_CHECKING:
    from sparse_tf.tasks.encoding import (
        EncodedPairs,
        TaskBatch,
        TaskTokenError,
        batches,
        encode_pairs,
        truncated,
    )
    from sparse_tf.tasks.files import PairsFile, read_pairs_file
    from sparse_tf.tasks.metrics import (
        TaskScore,
        candidate_logits,
        contrast_loss,
        evaluate_task,
        last_logits,
        mean_scores,
        score,
    )

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


def get_task(name: str) -> Task:
    """The task called `name`; a `TaskError` lists the choices otherwise."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def task_tokens() -> list[str]:
    """Every candidate token of every task under the default tokenizer, sorted."""
    return sorted(set().union(*(t.tokens for t in TASKS.values())))


__all__ = [
    "CHANCE_LOSS",
    "SPLITS",
    "TASKS",
    "EncodedPairs",
    "Example",
    "Pair",
    "PairSource",
    "PairsFile",
    "Split",
    "Task",
    "TaskBatch",
    "TaskError",
    "TaskScore",
    "TaskTokenError",
    "batches",
    "candidate_logits",
    "contrast_loss",
    "encode_pairs",
    "evaluate_task",
    "get_task",
    "last_logits",
    "load_pairs",
    "mean_scores",
    "parse_pair",
    "read_pairs_file",
    "save_pairs",
    "score",
    "task_tokens",
    "truncated",
]
