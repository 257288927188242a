"""What a task is: contrast pairs of Python prompts whose next token must differ.

A task generates `Pair`s. Both members of a pair are the same random program, differing in one
detail (a quote character, a bracket, a keyword); each member's text stops where the next token
depends on that detail. A member is an `Example`: its prompt text (`context`), the text that
decides (`target`, e.g. `")`), and how the line goes on (`rest`). A member's alternative is the
other member's target, so the model is asked the paper's binary question twice per pair.

Targets are text; which *token* they are depends on the tokenizer (`sparse_tf.tasks.encoding`):
it is the token the tokenizer itself produces at that point of the full line. Under the default
tokenizer that token is one of `Task.tokens` (the paper's candidates, e.g. `")\\n` vs `')\\n`),
which BPE training reserves.

Splits are a function of the pairs' text (a hash of the code the two prompts share), not of the
seed, so train, val and test never share a prompt whatever seeds are used to draw them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sparse_tf.errors import SparseTFError
from sparse_tf.io import atomic_write_text

CHANCE_LOSS = math.log(2)
"""A task's loss at chance: the binary cross-entropy of the two candidates held equally likely
(pruning targets must lie below it)."""

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# A pair's split: sha256 of its shared lines, modulo 10: 0-7 train, 8 val, 9 test.
_SPLIT_OF_BUCKET: tuple[Split, ...] = ("train",) * 8 + ("val", "test")


class TaskError(SparseTFError):
    """A task name, split or request that cannot be served; the message names it."""


@dataclass(frozen=True)
class Example:
    """One member of a contrast pair."""

    context: str
    """The prompt: the program text up to the decision point."""
    target: str
    """The text that comes next and decides the task (the candidate)."""
    rest: str = ""
    """How the line continues after `target`; only used to tokenise the target in context."""


@dataclass(frozen=True)
class Pair:
    """Two programs that differ in one detail; `a` is the task's first class, `b` its second."""

    task: str
    a: Example
    b: Example

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "split": self.split, "a": asdict(self.a), "b": asdict(self.b)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pair:
        return cls(data["task"], Example(**data["a"]), Example(**data["b"]))

    @property
    def key(self) -> str:
        return f"{self.task}\0{self.a.context}\0{self.b.context}"

    @property
    def split(self) -> Split:
        """Decided by the lines the two prompts share before the line where they differ. A
        prompt can pair with several partners (`with open(path` with `f = open(path` and with
        `fh = open(path`), but all of them share the same lines with it, so a prompt never
        lands in two splits."""
        a, b = self.a.context.splitlines(keepends=True), self.b.context.splitlines(keepends=True)
        n = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        shared = "".join(a[:n])
        digest = hashlib.sha256(f"{self.task}\0{shared}".encode()).digest()
        return _SPLIT_OF_BUCKET[int.from_bytes(digest[:8], "big") % 10]


@dataclass(frozen=True)
class Task:
    """A hand-built task: a generator of contrast pairs and the rule that decides them."""

    name: str
    summary: str
    """One line: what decides the next token, and the two candidates."""
    make: Callable[[random.Random], Pair] = field(repr=False)
    """Draws one random pair (the task's docstring is this function's)."""
    rule: Callable[[str], str] = field(repr=False)
    """The decision rule written out: a prompt's text -> its target. The tests check that every
    generated example obeys it; it is the oracle that proves a task solvable from the prompt."""
    tokens: frozenset[str]
    """The candidate tokens under the default tokenizer (reserved when it is trained)."""
    differ: str
    """Regex that every region where a pair's two prompts differ matches in full, on both
    sides (regions of a diff over words, whitespace runs and punctuation runs)."""
    max_regions: int = 1
    """How many separate regions the two prompts may differ in."""
    not_for_circuits: str = ""
    """Why the task is left out of circuit comparisons; empty: it is in them. A task whose two
    prompts end on different tokens must say why here (a test checks it): the model's bigram
    table, which sees the last token with no ablation, can decide such a task with no circuit
    at all, so its circuit's size says nothing."""

    @property
    def doc(self) -> str:
        return (self.make.__doc__ or self.summary).strip()

    def pairs(self, n: int, seed: int = 0, split: Split = "test") -> list[Pair]:
        """`n` distinct pairs of `split`, the same for the same `(n, seed, split)`; a larger
        `n` extends a smaller one's list."""
        if split not in SPLITS:
            raise TaskError(f"split {split!r}: choose from {list(SPLITS)}")
        if n < 0:
            raise TaskError(f"n={n}: must be >= 0")
        rng = random.Random(f"{self.name}/{seed}/{split}")
        seen: set[str] = set()
        out: list[Pair] = []
        for _ in range(200 * n + 1000):
            if len(out) == n:
                break
            pair = self.make(rng)
            if pair.split == split and pair.key not in seen:
                seen.add(pair.key)
                out.append(pair)
        if len(out) < n:
            raise TaskError(
                f"task {self.name!r}: found only {len(out)} distinct {split} pairs of {n} asked"
            )
        return out


def save_pairs(path: str | Path, pairs: list[Pair]) -> None:
    """Write pairs as JSON lines (`{"task", "split", "a": {...}, "b": {...}}`), atomically."""
    atomic_write_text(Path(path), "".join(json.dumps(p.to_dict()) + "\n" for p in pairs))


def load_pairs(path: str | Path) -> list[Pair]:
    """Read pairs written by `save_pairs`; a malformed line is an error naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror or e})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        try:
            pair, _ = parse_pair(json.loads(line))
            if not pair.task:
                raise ValueError("missing field 'task'")
        except ValueError as e:
            raise TaskError(f"{path}:{number}: not a task pair ({e})") from None
        pairs.append(pair)
    return pairs


class PairSource(Protocol):
    """What pruning and scoring need of a task: its name and its pairs of a split. A `Task`
    generates them; a `sparse_tf.tasks.files.PairsFile` reads them from a file."""

    @property
    def name(self) -> str: ...

    def pairs(self, n: int, seed: int = 0, split: Split = "test") -> list[Pair]: ...


_EXAMPLE_FIELDS = {"context", "target", "rest"}
_PAIR_FIELDS = {"task", "split", "a", "b"}


def parse_pair(data: Any) -> tuple[Pair, Split | None]:
    """A pair from one decoded JSON line of a pairs file, checked field by field, and its
    `split` field (None: absent). A missing `task` is the empty string (the caller names the
    task). Raises `ValueError` naming the field at fault."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON object is expected, not {type(data).__name__}")
    if unknown := sorted(set(data) - _PAIR_FIELDS):
        raise ValueError(f"unknown field(s) {unknown}; a pair has {sorted(_PAIR_FIELDS)}")
    task = data.get("task", "")
    if not isinstance(task, str):
        raise ValueError(f"'task' must be a string, not {task!r}")
    split = data.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"'split' {split!r}: choose from {list(SPLITS)}")
    members = []
    for key in ("a", "b"):
        if key not in data:
            raise ValueError(f"missing field {key!r} (the pair's two members)")
        member = data[key]
        if not isinstance(member, dict):
            raise ValueError(f"{key!r} must be an object with 'context' and 'target'")
        if unknown := sorted(set(member) - _EXAMPLE_FIELDS):
            raise ValueError(f"{key}: unknown field(s) {unknown}")
        for name in ("context", "target"):
            if name not in member:
                raise ValueError(f"{key}: missing field {name!r}")
        for name, value in member.items():
            if not isinstance(value, str):
                raise ValueError(f"{key}.{name} must be a string, not {value!r}")
        if not member["target"]:
            raise ValueError(f"{key}.target is empty")
        members.append(Example(**member))
    return Pair(task, members[0], members[1]), split
