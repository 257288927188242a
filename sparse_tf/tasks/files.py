"""Your own task: contrast pairs read from a JSON-lines file (`--pairs FILE` of `sparse-tf eval`
and `sparse-tf prune`).

The format is what `sparse-tf tasks --out` writes (`save_pairs`), one pair a line:

    {"task": "quotes", "a": {"context": "x = f(\\"hi", "target": "\\")"},
                       "b": {"context": "x = f('hi", "target": "')"}}

`a` and `b` are the two members (`context`, `target`, optional `rest`); `task` and `split` are
optional. Blank lines are skipped.

- **Name.** The pairs' `task` field when every pair has the same one, else (fields that differ
  or are missing) the file's stem: `my_pairs.jsonl` is task `my_pairs`.
- **Splits.** A pair's `split` field when it has one (files of `sparse-tf tasks --out` carry
  the split the built-in tasks give it), else `Pair.split`, the built-in tasks' rule: a hash of
  the lines the two prompts share before the line where they differ. Pairs whose prompts differ
  on their first line share nothing, so they all land in the same split: give such pairs a
  `split` field.
- **How many.** `pairs(n, seed, split)` is the first `n` pairs of the split in file order, or
  all of them when the file has fewer; the seed chooses nothing (the file is the choice). A
  split the file has no pair of is an error naming the file and the count of every split.
- **Tokens.** `check_tokens(tok)` checks every pair of the file against a model's tokenizer
  before any work: each candidate must be a single token after its prompt (as for the built-in
  tasks, `encode_pairs`); the error names the file, the line and how the string tokenises.
- **Provenance.** `record()` is the path as given, the sha256 of the file's bytes, and the
  counts: what circuit.json and eval reports keep, so that a run can be reproduced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from sparse_tf.tasks.base import SPLITS, Pair, Split, TaskError, parse_pair
from sparse_tf.tasks.encoding import encode_pairs


@dataclass(frozen=True)
class FilePair:
    line: int
    """The pair's line number in the file (from 1)."""
    split: Split
    pair: Pair


@dataclass(frozen=True)
class PairsFile:
    """The pairs of one JSON-lines file, as a task (see the module doc)."""

    path: str
    """The file's path as it was given."""
    sha256: str
    """Of the file's bytes."""
    name: str
    entries: tuple[FilePair, ...]

    def pairs(self, n: int, seed: int = 0, split: Split = "test") -> list[Pair]:
        """The first `n` pairs of `split` in file order (all of them if fewer); `seed` is
        accepted for `PairSource` and chooses nothing."""
        if split not in SPLITS:
            raise TaskError(f"split {split!r}: choose from {list(SPLITS)}")
        if n < 0:
            raise TaskError(f"n={n}: must be >= 0")
        found = [e.pair for e in self.entries if e.split == split]
        if not found and n > 0:
            counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
            raise TaskError(
                f"{self.path}: no {split} pairs (its {len(self.entries)} pairs: {counts}); a "
                "pair's split is its 'split' field, else a hash of the lines its two prompts "
                "share (prompts that differ on their first line all hash alike): add pairs or "
                "give them a 'split' field"
            )
        return found[:n]

    def counts(self) -> dict[str, int]:
        """Pairs per split."""
        return {s: sum(e.split == s for e in self.entries) for s in SPLITS}

    def check_tokens(self, tok: Tokenizer) -> None:
        """Raise a `TaskTokenError` naming the file and line of the first pair whose candidates
        are not single (and different) tokens of `tok` after their prompts."""
        for e in self.entries:
            encode_pairs([e.pair], tok, where=f"{self.path}:{e.line}")

    def record(self) -> dict[str, Any]:
        """Where the pairs came from, for circuit.json and eval reports."""
        return {"file": self.path, "sha256": self.sha256, "task": self.name, **self.counts()}


def read_pairs_file(path: str | Path) -> PairsFile:
    """The pairs of a JSON-lines file; a `TaskError` names the file and line of a malformed
    one."""
    given = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TaskError(f"{given}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TaskError(f"{given}:{line}: not UTF-8 text") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair, split = parse_pair(json.loads(line))
        except ValueError as e:
            raise TaskError(f"{given}:{number}: not a task pair ({e})") from None
        entries.append(FilePair(number, split or pair.split, pair))
    if not entries:
        raise TaskError(f"{given}: no pairs (one JSON object a line, as sparse-tf tasks --out)")
    tasks = {e.pair.task for e in entries}
    (only,) = tasks if len(tasks) == 1 else ("",)
    name = only or Path(given).stem
    return PairsFile(given, hashlib.sha256(data).hexdigest(), name, tuple(entries))
