"""Synthetic processes as training corpora: `--data.source process:NAME`.

Each document is one sampled sequence written as symbols ("s0 s3 s3 s1 ..."), read by a fixed
word-level tokenizer (`<|endoftext|>` then the process's symbols), so `sparse-tf train` packs and
windows it like any corpus. The documents are a pure function of the name (fixed seeds), so the
corpus digest, the splits and every resumed run agree.

    process:markov4      the 4-state circulant chain (stay 0.75), 6,000 sequences of 32 states
    process:factored     3 x Mess3 + 2 x tom_quantum, 432 composite tokens, 1,000,000 x 8
    process:factored-eps0.1   the same with noise ε = 0.1 (any ε in [0, 1])
    process:modadd53     every (a, b) of Z_53 as "a b c" with c = (a + b) mod 53
    process:dyck3        bracket strings of 3 families, half valid Dyck (depth ≤ 8), half
                         random, lengths 2-62
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer, models, pre_tokenizers

from sparse_tf.data.corpus import Corpus, CorpusError, Split, SplitScan
from sparse_tf.data.processes import FactoredProcess, factored_process, markov_chain
from sparse_tf.data.tokenizer import EOT

PROCESS_PREFIX = "process:"
MARKOV_LENGTH = 32
FACTORED_DOCS, FACTORED_LENGTH = 1_000_000, 8
DYCK_SYMBOLS = ["(", ")", "[", "]", "{", "}"]


def markov_sequences(n: int, length: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """n state sequences [n, length] of the 4-state circulant chain, the first state uniform."""
    tokens, _ = FactoredProcess((markov_chain(),)).sample(n, length, rng)
    return tokens


def _markov4() -> tuple[list[str], list[list[int]]]:
    tokens = markov_sequences(6000, MARKOV_LENGTH, np.random.default_rng(0))
    return [f"s{i}" for i in range(4)], tokens.tolist()


def _factored(noise: float) -> Callable[[], tuple[list[str], list[list[int]]]]:
    def make() -> tuple[list[str], list[list[int]]]:
        process = factored_process(noise)
        tokens, _ = process.sample(FACTORED_DOCS, FACTORED_LENGTH, np.random.default_rng(0))
        return [f"t{i}" for i in range(process.vocab)], tokens.tolist()

    return make


def _modadd(p: int) -> tuple[list[str], list[list[int]]]:
    docs = [[a, b, (a + b) % p] for a in range(p) for b in range(p)]
    return [f"n{i}" for i in range(p)], docs


def dyck_sequences(n: int, rng: np.random.Generator) -> list[list[int]]:
    """n bracket strings (symbols 0-5: `( ) [ ] { }`) of lengths 2-62: even-numbered ones are
    valid Dyck-3 prefixes (open with 0.55 when depth < 8, forced at depth 0, close forced at
    8; family uniform), odd-numbered ones uniform random strings."""
    docs = []
    for i in range(n):
        length = int(rng.integers(2, 63))
        if i % 2:  # uniform random bracket string
            docs.append(rng.integers(0, 6, length).tolist())
            continue
        stack: list[int] = []
        seq = []
        for _ in range(length):
            must_open = not stack
            must_close = len(stack) == 8
            if must_open or (not must_close and rng.random() < 0.55):
                family = int(rng.integers(0, 3))
                stack.append(family)
                seq.append(2 * family)
            else:
                seq.append(2 * stack.pop() + 1)
        docs.append(seq)
    return docs


def _dyck3() -> tuple[list[str], list[list[int]]]:
    return DYCK_SYMBOLS, dyck_sequences(20_000, np.random.default_rng(0))


def _builder(name: str) -> Callable[[], tuple[list[str], list[list[int]]]]:
    fixed: dict[str, Callable[[], tuple[list[str], list[list[int]]]]] = {
        "markov4": _markov4,
        "factored": _factored(0.0),
        "modadd53": lambda: _modadd(53),
        "dyck3": _dyck3,
    }
    if name in fixed:
        return fixed[name]
    if m := re.fullmatch(r"factored-eps([0-9.]+)", name):
        eps = float(m.group(1))
        if 0.0 <= eps <= 1.0:
            return _factored(eps)
    raise CorpusError(
        f"data.source='{PROCESS_PREFIX}{name}': unknown process; choose from "
        f"{', '.join(PROCESS_PREFIX + k for k in fixed)} or {PROCESS_PREFIX}factored-epsX"
    )


def synthetic_corpus(source: str, val_frac: float) -> Corpus:
    """The corpus of `process:NAME` (see the module docstring)."""
    symbols, docs = _builder(source.removeprefix(PROCESS_PREFIX))()
    digest = hashlib.sha256(f"process\0{source}\0{val_frac!r}\0".encode())
    scan = SplitScan(source, val_frac, record=True)
    for i, d in enumerate(docs):
        scan.add(_key(i))
        digest.update(np.asarray(d, dtype=np.int32).tobytes())
    splitter = scan.finish()
    scan.update_digest(digest)

    def documents(split: Split) -> Iterator[str]:
        for i, d in enumerate(docs):
            if splitter(_key(i)) == split:
                yield " ".join(symbols[x] for x in d)

    return Corpus(
        source=source,
        digest=digest.hexdigest(),
        info={"kind": "process", "symbols": symbols},
        size=len(docs),
        counts=dict(scan.counts),
        _entries=lambda: ((_key(i), splitter(_key(i))) for i in range(len(docs))),
        _documents=documents,
    )


def _key(i: int) -> str:
    return f"{i:07d}"


def symbol_tokenizer(symbols: list[str]) -> Tokenizer:
    """`<|endoftext|>` (id 0) then one token per symbol, split on whitespace."""
    vocab = {EOT: 0, **{s: i + 1 for i, s in enumerate(symbols)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOT])
    return tok
