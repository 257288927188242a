"""The word-cache encoder against the `tokenizers` library: the same ids on any text, or the
library itself where they could differ."""

from __future__ import annotations

import itertools
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from sparse_tf.data import EOT, train_bpe
from sparse_tf.data import word_cache as wc
from sparse_tf.data.encode import batch_encoder, encode_documents
from sparse_tf.data.tokenizer import MAX_PRETOKEN, PRETOKENIZE_PATTERN, bpe_pre_tokenizer
from sparse_tf.data.word_cache import ASCII_PATTERN, WordCacheEncoder, ascii_runs
from sparse_tf.tasks import task_tokens

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A trained BPE with the task tokens reserved (merges appended after training, some of
    them second routes to tokens the trainer made)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("[a-c]*.py"))]
    return train_bpe(texts, 1024, task_tokens())


def library_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def cached_ids(encoder: WordCacheEncoder, texts: list[str]) -> list[list[int]]:
    return [ids.tolist() for ids in encoder.encode(texts)]


def test_the_ascii_pattern_is_a_translation_of_the_current_pattern() -> None:
    """Changing PRETOKENIZE_PATTERN turns the cache off until ASCII_PATTERN is redone."""
    assert PRETOKENIZE_PATTERN == wc.TRANSLATED_FROM


# Every ASCII character (controls, \v and \f included), the pattern's classes' neighbours,
# whitespace that is not ASCII (NBSP, NEL, LINE SEPARATOR), letters and digits of other
# scripts, and the end-of-text marker written out.
_CHARS = [chr(c) for c in range(128)] + list("é中٣\u00a0\u0085\u2028ß")
_TEXT = st.lists(
    st.one_of(
        st.sampled_from(_CHARS),
        st.sampled_from(
            ["def ", "self", "):\n", "    ", "\n\n", "//", "123456", " x", EOT, "\n/", "é\n"]
        ),
    ),
    max_size=60,
).map("".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(_TEXT, min_size=1, max_size=4))
def test_the_same_ids_as_the_library_on_any_text(tok: Tokenizer, texts: list[str]) -> None:
    encoder = WordCacheEncoder.for_tokenizer(tok, np.int64)
    assert encoder is not None
    assert cached_ids(encoder, texts) == library_ids(tok, texts)
    for text in texts:
        runs = ascii_runs(text)
        assert "".join(runs) == text
        assert all(a.isascii() != b.isascii() for a, b in itertools.pairwise(runs))
        for run in runs:  # on the runs it encodes, the split itself is the library's
            if run.isascii() and EOT not in text:
                words = [run[a:b] for _, (a, b) in tok.pre_tokenizer.pre_tokenize_str(run)]
                assert ASCII_PATTERN.findall(run) == words


@pytest.mark.parametrize(
    "text",
    [
        "f(x):\n/é\n",  # a punctuation token goes on over the newline into the '/'
        "f(x):\n/x\né\n",
        "a  \n\né b",  # whitespace and newlines before a line that is not ASCII
        "x\n é\ny",  # whitespace after the newline belongs to the next token
        "é\n\n  x\n",
        "1)\n\u00a0y\nz",  # NBSP: whitespace to the library, not ASCII
        "é\r\nx = 1\r\n",
    ],
)
def test_ascii_runs_are_cut_where_no_token_spans(tok: Tokenizer, text: str) -> None:
    encoder = WordCacheEncoder.for_tokenizer(tok, np.int64)
    assert encoder is not None
    assert cached_ids(encoder, [text]) == library_ids(tok, [text])


def test_a_cut_before_a_slash_would_change_the_ids() -> None:
    """A punctuation token takes the newlines and slashes after it (`):\n/` is one pre-token),
    so no run may start at a '/' after a newline: with a BPE that learned that token, the
    library's ids of a text that is not all ASCII hold it."""
    slashy = train_bpe(["def f(x):\n/y\n"] * 200, 300)
    assert len(slashy.encode("):\n/").ids) == 1
    text = "f(x):\n/é\n"
    encoder = WordCacheEncoder.for_tokenizer(slashy, np.int64)
    assert encoder is not None
    assert cached_ids(encoder, [text]) == library_ids(slashy, [text])


def test_the_same_ids_as_the_library_on_the_standard_library(tok: Tokenizer) -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("[d-l]*.py"))]
    encoder = WordCacheEncoder.for_tokenizer(tok, np.uint16)
    assert encoder is not None
    assert 0 < sum(not t.isascii() for t in texts) < len(texts) // 4  # mostly ASCII
    assert cached_ids(encoder, texts) == library_ids(tok, texts)


def test_a_full_cache_takes_no_more_words(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wc, "MAX_WORDS", 50)
    texts = [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("[m-o]*.py"))[:6]]
    encoder = WordCacheEncoder.for_tokenizer(tok, np.uint16)
    assert encoder is not None
    assert cached_ids(encoder, texts) == library_ids(tok, texts)
    assert len(encoder.words) == 50


def test_long_words_are_not_cached(tok: Tokenizer) -> None:
    """A run longer than MAX_WORD_CHARS (a minified line, embedded data) is encoded each time:
    the cache's memory is bounded in words and in characters."""
    long_run = "x" * (wc.MAX_WORD_CHARS + 1)
    texts = [f"{long_run} = 1\n", f"a = {long_run}\n", "y" * 5000]
    encoder = WordCacheEncoder.for_tokenizer(tok, np.int64)
    assert encoder is not None
    assert cached_ids(encoder, texts) == library_ids(tok, texts)
    assert max(map(len, encoder.words)) <= wc.MAX_WORD_CHARS
    assert {"=", " 1", " ="} & set(encoder.words)  # the short words of those texts are cached


def test_the_packed_stream_is_the_librarys(tok: Tokenizer) -> None:
    texts = ["import os\n", "x = 'é'\n", "", f"a{EOT}b\n", "def f():\n    return 1\n"]
    dtype = np.uint16
    packed = encode_documents(tok, texts, dtype).tolist()
    eot = tok.token_to_id(EOT)
    expected = [i for ids in library_ids(tok, texts) for i in [*ids, eot]]
    assert packed == expected
    assert isinstance(getattr(batch_encoder(tok, dtype), "__self__", None), WordCacheEncoder)


def _variant(tok: Tokenizer, change: str) -> Tokenizer:
    out = Tokenizer.from_str(tok.to_str())
    if change == "cut":  # the pre-tokenizer of the python-bpe-v3 recipe
        out.pre_tokenizer = bpe_pre_tokenizer(cut=MAX_PRETOKEN)
    elif change == "gpt2":
        out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif change == "normalizer":
        out.normalizer = normalizers.NFKC()
    elif change == "dropout":
        spec = json.loads(out.to_str())
        spec["model"]["dropout"] = 0.1
        out = Tokenizer.from_str(json.dumps(spec))
    return out


@pytest.mark.parametrize("change", ["cut", "gpt2", "normalizer", "dropout"])
def test_tokenizers_it_cannot_match_take_the_library(tok: Tokenizer, change: str) -> None:
    other = _variant(tok, change)
    assert WordCacheEncoder.for_tokenizer(other, np.uint16) is None
    if change == "dropout":
        return  # random ids: nothing to compare
    text = ["def f(x):\n    return x\n"]
    assert [ids.tolist() for ids in batch_encoder(other, np.uint16)(text)] == [
        e.ids for e in other.encode_batch_fast(text, add_special_tokens=False)
    ]
