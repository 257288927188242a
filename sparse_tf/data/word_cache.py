"""Encoding ASCII text with the trained BPE 2-3 times as fast, with the same ids.

The `tokenizers` library spends about a microsecond on every pre-token (byte-level mapping,
a cache lookup, an encoding built per word and merged), while its regex is at most a tenth of
its time (`benchmarks/RESULTS.md`, "Data preparation"). Source code repeats its words, so
`WordCacheEncoder` splits ASCII text with Python's `re`, asks the library's own BPE model for
each distinct word once, and joins the cached ids:

- The split: `PRETOKENIZE_PATTERN` written for ASCII (`ASCII_PATTERN`). On ASCII text the two
  are the same regex: `\\p{L}` is `[A-Za-z]`, `\\p{N}` is `[0-9]`, and `\\s` (Unicode White_Space
  in the library's engine, `re.ASCII`'s `\\s` here) is `[\\t\\n\\v\\f\\r ]` in both.
- A word's ids: the tokenizer's model (`tok.model.tokenize`) on the word's byte-level symbols,
  exactly the call the library makes for every pre-token.

It is used only where the result cannot differ from `Tokenizer.encode`: for a tokenizer with
no normalizer that pre-tokenises exactly as `bpe_pre_tokenizer()` (every trained BPE since
`python-bpe-v4`, and tinypython_2k) with a BPE model without dropout; on the ASCII lines of a
text (a text that is not all ASCII is cut where no pre-token can span, `SAFE_CUT`, and its
other runs go to the library); never on a text that holds an added token written out
(`<|endoftext|>`), which goes to the library whole. `tests/test_word_cache.py` checks the ids
against the library's on random text and on the standard library.

Memory: at most MAX_WORDS cached words of at most MAX_WORD_CHARS characters (their ids as
tuples; a longer word, or a new one once the cache is full, serves its text only), so a
worker's memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from itertools import chain, groupby, islice
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from sparse_tf.data.tokenizer import PRETOKENIZE_PATTERN, bpe_pre_tokenizer

ASCII_PATTERN = re.compile(
    r"[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    re.ASCII,
)
"""`PRETOKENIZE_PATTERN` on ASCII text, alternative for alternative (`\\p{L}` -> A-Za-z,
`\\p{N}` -> 0-9)."""
TRANSLATED_FROM = (
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""The pattern ASCII_PATTERN translates: a changed PRETOKENIZE_PATTERN turns the cache off
(and fails a test) until ASCII_PATTERN is translated again."""
MAX_WORDS = 1 << 18
"""Most words cached: ~80 MB of a worker's memory at the ~305 bytes a cached word takes (key,
ids and the dict's entry). The standard library has ~99,000 distinct words."""
MAX_WORD_CHARS = 64
"""Longer words are encoded every time, not cached: they rarely repeat, and a corpus of long
unique runs (minified lines, embedded data: a word can be a whole 1 MiB piece) would otherwise
fill MAX_WORDS entries of any size."""
SAFE_CUT = re.compile(r"(?<=\n)(?=[!-.0-~])")
"""A place in a text right after a newline and before printable ASCII other than '/': no
pre-token of PRETOKENIZE_PATTERN spans it (the newline ends a whitespace or punctuation token,
which only whitespace or '/' could extend; no token starts with a newline and goes on), so the
ids of the text are those of its two sides. `pieces` cuts long texts at such places too."""

Ids = tuple[int, ...]
Encode = Callable[[list[str]], list[np.ndarray]]
"""Texts -> the ids of each, as arrays."""


def library_encoder(tok: Tokenizer, dtype: Any) -> Encode:
    """`tok.encode_batch(texts, add_special_tokens=False)`'s ids, as arrays of `dtype`."""

    def encode(texts: list[str]) -> list[np.ndarray]:
        # encode_batch_fast skips the character offsets, which packing never reads (same ids).
        encoded = tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(enc.ids, dtype) for enc in encoded]

    return encode


def ascii_runs(text: str) -> list[str]:
    """`text` cut at SAFE_CUTs into runs that are each ASCII or not, alternately (`[text]` for
    ASCII text): the cache encodes the ASCII runs of a text that is not all ASCII."""
    if text.isascii():
        return [text]
    return ["".join(run) for _, run in groupby(SAFE_CUT.split(text), key=str.isascii)]


class WordCacheEncoder:
    """`encode(texts)`: each text's ids as `Tokenizer.encode_batch(texts,
    add_special_tokens=False)` gives them, as arrays of `dtype`. Build with `for_tokenizer`,
    which says whether the tokenizer allows it."""

    def __init__(self, tok: Tokenizer, dtype: Any, added: Sequence[str]) -> None:
        self.dtype = dtype
        self.model = tok.model
        self.library = library_encoder(tok, dtype)
        self.added = tuple(added)
        # The byte-level symbol of every ASCII character, from the library itself (a
        # str.translate table).
        level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self.symbols = {c: level.pre_tokenize_str(chr(c))[0][0] for c in range(128)}
        self.words: dict[str, Ids] = {}

    @classmethod
    def for_tokenizer(cls, tok: Tokenizer, dtype: Any) -> WordCacheEncoder | None:
        """The encoder for `tok`, or None where its ids could differ from the library's (see
        the module's docstring): then encode with the library."""
        spec = json.loads(tok.to_str())
        reference = Tokenizer(models.BPE())
        reference.pre_tokenizer = bpe_pre_tokenizer()
        model = spec.get("model") or {}
        if (
            PRETOKENIZE_PATTERN != TRANSLATED_FROM
            or spec.get("normalizer") is not None
            or spec.get("pre_tokenizer") != json.loads(reference.to_str())["pre_tokenizer"]
            or model.get("type") != "BPE"
            or model.get("dropout") is not None
        ):
            return None
        return cls(tok, dtype, [t["content"] for t in spec.get("added_tokens") or []])

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text (see the class)."""
        parts: list[list[np.ndarray | None]] = [[] for _ in texts]  # each text's runs, in order
        library: list[str] = []  # what the library encodes, and where its ids go
        slots: list[tuple[int, int]] = []

        def to_library(i: int, text: str) -> None:
            slots.append((i, len(parts[i])))
            parts[i].append(None)
            library.append(text)

        for i, text in enumerate(texts):
            if any(a in text for a in self.added):
                to_library(i, text)  # the library's added-token matching, on the whole text
                continue
            for run in ascii_runs(text):
                if run.isascii():
                    parts[i].append(self._encode(run))
                else:
                    to_library(i, run)
        if library:
            for (i, j), ids in zip(slots, self.library(library), strict=True):
                parts[i][j] = ids
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]  # type: ignore[misc]

    def _encode(self, text: str) -> np.ndarray:
        words = ASCII_PATTERN.findall(text)
        lookup: Callable[[str], Ids] = self.words.__getitem__
        if new := set(words).difference(self.words):
            ids = {w: self._word_ids(w) for w in new}
            room = max(0, MAX_WORDS - len(self.words))
            short = [(w, i) for w, i in ids.items() if len(w) <= MAX_WORD_CHARS]
            self.words.update(islice(short, room))
            if len(short) > room or len(short) < len(ids):  # the words left out: this text only
                lookup = lambda w: ids[w] if w in ids else self.words[w]  # noqa: E731
        return np.fromiter(chain.from_iterable(map(lookup, words)), self.dtype)

    def _word_ids(self, word: str) -> Ids:
        """The model's ids of one pre-token, on its byte-level symbols."""
        return tuple(token.id for token in self.model.tokenize(word.translate(self.symbols)))
