"""Hand-built tasks: the paper's 20 Python contrast tasks, their tokens and their metrics.

    from sparse_tf.tasks import TASKS, evaluate_task, get_task

    task = get_task("single_double_quote")
    pair = task.pairs(1, seed=0, split="train")[0]      # pair.a.context, pair.a.target, ...
    result = evaluate_task(model, tok, task, n=100)      # loss, accuracy, margin

`TASKS` maps each name to a `Task`; `task_tokens()` are the strings the default tokenizer
reserves so that every candidate is a single token. `read_pairs_file(path)` reads your own
task's pairs from a JSON-lines file (`PairsFile`, usable wherever a `Task` is scored or pruned).
"""

from sparse_tf.tasks.base import (
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
    CHANCE_LOSS,
    TaskScore,
    candidate_logits,
    contrast_loss,
    evaluate_task,
    last_logits,
    mean_scores,
    score,
)


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
