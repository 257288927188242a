"""Evaluate a trained model folder: its validation loss and its scores on the hand-built tasks.

report = evaluate_model("runs/tiny-cpu/final", tasks="all", n=100)
print(report.table())            # what `sparse-tf eval` prints
report.to_dict()                 # what `sparse-tf eval --json FILE` writes
evaluate_model("runs/tiny-cpu/final", read_pairs_file("my_pairs.jsonl"))  # your own task
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from sparse_tf.checkpoint import CheckpointError, load_model
from sparse_tf.data import Data, DataConfig, load_tokenizer, prepare_data
from sparse_tf.devices import resolve_device
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import CONFIG_FILE
from sparse_tf.io import read_json
from sparse_tf.model import GPT
from sparse_tf.tasks import (
    CHANCE_LOSS,
    TASKS,
    PairsFile,
    PairSource,
    Split,
    TaskScore,
    TaskTokenError,
    evaluate_task,
    get_task,
    mean_scores,
)
from sparse_tf.trainable import model_config
from sparse_tf.training import validation_loss

MAX_PAIRS = 100_000
"""Most contrast pairs per task (and per batch) an evaluation takes: 200,000 prompts, minutes
on a GPU; more would only fill memory."""


class EvalError(SparseTFError):
    """An evaluation argument out of range."""


@dataclass(frozen=True)
class EvalReport:
    model: str
    split: Split
    seed: int
    n: int
    """Pairs per task."""
    val_loss: float | None
    val_note: str
    """What the validation loss was measured on, or why it was not."""
    scores: list[TaskScore]
    invalid: dict[str, str] = field(default_factory=dict)
    """Tasks the model's tokenizer cannot express, with the reason."""
    pairs_file: dict[str, Any] | None = None
    """Where the pairs came from (`PairsFile.record`); None: the built-in tasks."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "seed": self.seed,
            "n": self.n,
            "val_loss": self.val_loss,
            "val_note": self.val_note,
            "tasks": {s.task: s.to_dict() for s in self.scores},
            "mean": mean_scores(self.scores),
            "invalid": self.invalid,
            "pairs_file": self.pairs_file,
        }

    def table(self) -> str:
        val = f"{self.val_loss:.4f}" if self.val_loss is not None else "unavailable"
        lines = [
            f"model {self.model}: val loss {val} ({self.val_note})",
            f"{'task':<28} {'loss':>7} {'accuracy':>9} {'margin':>7} {'pairs':>6}",
        ]
        rows = {s.task: s for s in self.scores}
        for name in [*rows, *self.invalid]:
            s = rows.get(name)
            if s is None:
                lines.append(f"{name:<28} {'-':>7} {'-':>9} {'-':>7} {'-':>6}  (invalid)")
            else:
                note = f"  ({s.truncated} prompts truncated)" if s.truncated else ""
                lines.append(
                    f"{name:<28} {s.loss:>7.3f} {s.accuracy:>9.3f} {s.margin:>7.2f} "
                    f"{s.pairs:>6}{note}"
                )
        if len(self.scores) > 1:
            m = mean_scores(self.scores)
            label = f"mean of {len(self.scores)}"
            lines.append(f"{label:<28} {m['loss']:>7.3f} {m['accuracy']:>9.3f} {m['margin']:>7.2f}")
        if self.pairs_file is None:
            where = f"{self.split} split, seed {self.seed}"
        else:
            f = self.pairs_file
            where = f"{self.split} split of {f['file']} (sha256 {f['sha256'][:12]})"
        lines.append(
            f"{where}; loss: cross-entropy between the two candidates (chance "
            f"{CHANCE_LOSS:.3f}, accuracy 0.5)"
        )
        lines += [f"invalid: {reason}" for reason in self.invalid.values()]
        return "\n".join(lines)


def evaluate_model(
    path: str | Path,
    tasks: str | Sequence[str] | PairsFile = "all",
    *,
    n: int | None = None,
    seed: int = 0,
    split: Split = "test",
    device: str = "auto",
    val_windows: int = 256,
    pairs_per_batch: int = 32,
) -> EvalReport:
    """Validation loss and task scores of the model folder `path` (`OUT/final`, a step
    checkpoint or an export).

    Args:
        tasks: "all", one task name, a list of names, or your own task's pairs
            (`read_pairs_file`; every pair of the file is checked against the model's
            tokenizer first).
        n: contrast pairs per task (2n prompts); default 100, and for a file all the pairs of
            `split` it has (n caps them).
        val_windows: validation windows of the training corpus (0: skip the validation loss).
    """
    if n is None:
        n = MAX_PAIRS if isinstance(tasks, PairsFile) else 100
    for name, flag, value, low, high in (
        ("n", "--n", n, 1, MAX_PAIRS),
        ("pairs_per_batch", "--batch-size", pairs_per_batch, 1, MAX_PAIRS),
        ("val_windows", "--val-windows", val_windows, 0, None),
    ):
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise EvalError(f"{name}={value} ({flag}): must be {bound}")
    if isinstance(tasks, PairsFile):
        selected: list[PairSource] = [tasks]
    elif tasks == "all":
        selected = list(TASKS.values())
    else:
        selected = [get_task(name) for name in ([tasks] if isinstance(tasks, str) else tasks)]
    dev = resolve_device(device, flag="--device")
    model, tok = load_model_and_tokenizer(path, dev)
    if isinstance(tasks, PairsFile):
        tasks.pairs(1, seed, split)  # a split without pairs: said before any scoring
        tasks.check_tokens(tok)  # the whole file: its line named, whatever the split
    scores, invalid = [], {}
    for task in selected:
        try:
            scores.append(
                evaluate_task(
                    model, tok, task, n=n, seed=seed, split=split, pairs_per_batch=pairs_per_batch
                )
            )
        except TaskTokenError as e:
            if len(selected) == 1:
                raise
            invalid[task.name] = str(e)
    val_loss, note = _val_loss(Path(path), model, tok, val_windows, dev.type == "cuda")
    if isinstance(tasks, PairsFile):
        record, n = tasks.record(), scores[0].pairs  # the pairs scored: the file's, up to n
    else:
        record = None
    return EvalReport(str(path), split, seed, n, val_loss, note, scores, invalid, record)


def load_model_and_tokenizer(path: str | Path, device: torch.device) -> tuple[GPT, Tokenizer]:
    """A model folder's model (in eval mode, on `device`) and its tokenizer, checked to fit."""
    model, tok = load_model(path, device), load_tokenizer(path)
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise CheckpointError(
            f"{path}: its tokenizer has {tok.get_vocab_size()} tokens but the model only "
            f"{model.cfg.vocab_size} embeddings"
        )
    return model, tok


def training_data(path: str | Path, tok: Tokenizer) -> tuple[DataConfig, Data]:
    """The corpus a model folder was trained on, rebuilt from its config.json (tokenised with
    its own tokenizer; cached). Raises a `SparseTFError` saying why when that is impossible.

    Only the training config's data and model entries are read: they are those of every
    training config, whatever objective trained the model (a bridged run's has more)."""
    file = Path(path) / CONFIG_FILE
    train_cfg = read_json(file).get("train")
    if train_cfg is None:
        raise CheckpointError(f"{file} has no training config to find the corpus")
    if not isinstance(train_cfg, dict) or "model" not in train_cfg:
        raise CheckpointError(f"{file}: its training config names no model")
    data_cfg = DataConfig.from_dict(train_cfg.get("data", {}), source=str(file))
    model_cfg = model_config(train_cfg["model"], source=str(file))
    return data_cfg, prepare_data(data_cfg, model_cfg.vocab_size, model_cfg.n_ctx, tokenizer=tok)


def _val_loss(
    path: Path, model: GPT, tok: Tokenizer, windows: int, amp: bool
) -> tuple[float | None, str]:
    """The model's loss on its training corpus's validation split, rebuilt from config.json."""
    if windows <= 0:
        return None, "skipped"
    try:
        data_cfg, data = training_data(path, tok)
    except CheckpointError as e:
        return None, str(e)
    except SparseTFError as e:
        return None, f"corpus unavailable: {e}"
    if data.val is None:
        return None, "the training run held out no validation split"
    used = min(windows, len(data.val))
    loss = validation_loss(model, data.val, windows, batch_size=16, amp=amp)
    where = f"{data_cfg.source} (corpus digest {data.corpus.digest[:12]})"
    return loss, f"{used} windows of {where}, {model.cfg.n_ctx} tokens each"
