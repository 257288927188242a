"""Task pairs as token ids under a given tokenizer, checked, and as padded batches.

The candidate token of an example is the token the tokenizer itself produces right after the
prompt when it encodes the whole line (prompt + target + rest). It is valid when

- the prompt's own tokens are a prefix of the line's (the candidate does not merge with the end
  of the prompt), and
- that token covers the whole target (`")` may come as `")` + newline; `=None` split into `=`
  and `None` is not a single token);

and the two candidates of a member differ. Otherwise `TaskTokenError` names the task and the
string. Every prompt starts with `<|endoftext|>`, the document separator of pretraining, so a
prompt reads as the start of a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.data.tokenizer import eot_id
from sparse_tf.tasks.base import Example, Pair, TaskError


class TaskTokenError(TaskError):
    """A task's candidate is not a single token under the tokenizer in use."""


@dataclass(frozen=True)
class EncodedPairs:
    """Rows 2i and 2i + 1 are pair i's members a and b."""

    task: str
    prompts: list[list[int]]
    """Token ids, `<|endoftext|>` first."""
    targets: list[int]
    alternatives: list[int]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class TaskBatch:
    """Prompts right-padded to one length; `lengths` says where each one ends."""

    tokens: Tensor  # [M, T] int64
    lengths: Tensor  # [M] int64, >= 1
    targets: Tensor  # [M] int64
    alternatives: Tensor  # [M] int64

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self.__dict__.values()))


def encode_pairs(pairs: Sequence[Pair], tok: Tokenizer, where: str | None = None) -> EncodedPairs:
    """Token ids of every member of `pairs` with its target and alternative token. A
    `TaskTokenError` starts with `where` (default: the task's name), e.g. a file and line."""
    if not pairs:
        raise TaskError("no pairs to encode")
    task = pairs[0].task
    where = where if where is not None else f"task {task!r}"
    bos = eot_id(tok)
    prompts, targets, alternatives = [], [], []
    for pair in pairs:
        for member, other in ((pair.a, pair.b), (pair.b, pair.a)):
            ids, target, alternative = _encode_member(where, member, other, tok)
            prompts.append([bos, *ids])
            targets.append(target)
            alternatives.append(alternative)
    return EncodedPairs(task, prompts, targets, alternatives)


def _encode_member(
    where: str, ex: Example, other: Example, tok: Tokenizer
) -> tuple[list[int], int, int]:
    prompt = tok.encode(ex.context).ids
    n = len(prompt)
    found = []
    for target, rest in ((ex.target, ex.rest), (other.target, other.rest)):
        line = tok.encode(ex.context + target + rest).ids
        if line[:n] != prompt:
            raise TaskTokenError(
                f"{where}: candidate {target!r} merges with the end of the prompt "
                f"...{ex.context[-16:]!r} under this tokenizer (it encodes as "
                f"{_pieces(tok, line[max(0, n - 2) : n + 2])})"
            )
        if not tok.decode([line[n]]).startswith(target):
            # Every token the candidate spans, and at least three (what follows shows how the
            # line goes on), so that the message says how it tokenises.
            shown = max(3, _tokens_covering(tok, line[n:], target))
            raise TaskTokenError(
                f"{where}: candidate {target!r} is not a single token under this "
                f"tokenizer (after the prompt it encodes as {_pieces(tok, line[n : n + shown])})"
            )
        found.append(line[n])
    if found[0] == found[1]:
        raise TaskTokenError(
            f"{where}: candidates {ex.target!r} and {other.target!r} begin with the same "
            f"token {tok.decode([found[0]])!r} under this tokenizer"
        )
    return prompt, found[0], found[1]


def _tokens_covering(tok: Tokenizer, ids: list[int], text: str) -> int:
    """How many of `ids` (from the first) it takes to decode to at least `text`."""
    for count in range(1, len(ids) + 1):
        if len(tok.decode(ids[:count])) >= len(text):
            return count
    return len(ids)


def _pieces(tok: Tokenizer, ids: list[int]) -> str:
    return ", ".join(repr(tok.decode([i])) for i in ids)


def batches(
    encoded: EncodedPairs, pairs_per_batch: int, n_ctx: int, pad_id: int = 0
) -> Iterator[TaskBatch]:
    """Batches of whole pairs, right-padded with `pad_id`. Padding comes after each prompt's
    last token, so a causal model's logits at that token are unaffected by it. A prompt longer
    than `n_ctx` keeps its last `n_ctx` tokens (see `truncated`)."""
    rows = 2 * max(1, pairs_per_batch)
    for start in range(0, len(encoded), rows):
        prompts = [p[-n_ctx:] for p in encoded.prompts[start : start + rows]]
        width = max(len(p) for p in prompts)
        tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        yield TaskBatch(
            tokens=tokens,
            lengths=torch.tensor([len(p) for p in prompts]),
            targets=torch.tensor(encoded.targets[start : start + rows]),
            alternatives=torch.tensor(encoded.alternatives[start : start + rows]),
        )


def truncated(encoded: EncodedPairs, n_ctx: int) -> int:
    """How many prompts are longer than `n_ctx` tokens (and lose their first tokens)."""
    return sum(len(p) > n_ctx for p in encoded.prompts)
