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

It encodes a text that way only when the result cannot differ from `Tokenizer.encode`: the
tokenizer has no normalizer, pre-tokenises exactly as `bpe_pre_tokenizer()` (every trained BPE
since `python-bpe-v4`, and tinypython_2k) with a BPE model without dropout, and the text is
ASCII and holds no added token (`<|endoftext|>` written out). Any other text goes to the
library, in the same batch and order. `tests/test_data.py` checks both against the library on
random text and on the standard library.

Memory: at most MAX_WORDS cached words (their ids as tuples; once it is full, a text's new
words serve that text only), so a worker's memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from itertools import chain, islice
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
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")

Ids = tuple[int, ...]


class WordCacheEncoder:
    """`encode(texts)`: each text's ids as `Tokenizer.encode_batch(texts,
    add_special_tokens=False)` gives them, as arrays of `dtype`. Build with `for_tokenizer`,
    which says whether the tokenizer allows it."""

    def __init__(self, tok: Tokenizer, dtype: Any, added: Sequence[str]) -> None:
        self.tok, self.dtype = tok, dtype
        self.model = tok.model
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

    def cacheable(self, text: str) -> bool:
        """Whether `text` is encoded here (ASCII, no added token written out)."""
        return _NOT_ASCII.search(text) is None and not any(a in text for a in self.added)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text (see the class)."""
        out: list[np.ndarray | None] = [None] * len(texts)
        others = [i for i, text in enumerate(texts) if not self.cacheable(text)]
        if others:  # the library, for what the cache may not encode
            encoded = self.tok.encode_batch_fast(
                [texts[i] for i in others], add_special_tokens=False
            )
            for i, enc in zip(others, encoded, strict=True):
                out[i] = np.asarray(enc.ids, self.dtype)
        for i, text in enumerate(texts):
            if out[i] is None:
                out[i] = self._encode(text)
        return out  # type: ignore[return-value]

    def _encode(self, text: str) -> np.ndarray:
        words = ASCII_PATTERN.findall(text)
        lookup: Callable[[str], Ids] = self.words.__getitem__
        if new := set(words).difference(self.words):
            ids = {w: self._word_ids(w) for w in new}
            room = max(0, MAX_WORDS - len(self.words))
            self.words.update(islice(ids.items(), room))
            if len(ids) > room:  # full: the words left out serve this text only
                lookup = lambda w: ids[w] if w in ids else self.words[w]  # noqa: E731
        return np.fromiter(chain.from_iterable(map(lookup, words)), self.dtype)

    def _word_ids(self, word: str) -> Ids:
        """The model's ids of one pre-token, on its byte-level symbols."""
        return tuple(token.id for token in self.model.tokenize(word.translate(self.symbols)))
