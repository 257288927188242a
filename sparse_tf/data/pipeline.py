"""From a `DataConfig` to training and validation windows: corpus → tokenizer → packed shards.

Each stage is cached by content digest under `sparse_tf.io.cache_dir()`, so the second run on
the same corpus starts in about a second and a changed file retrains the tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from sparse_tf.data.config import DataConfig
from sparse_tf.data.corpus import Corpus, CorpusError, Split
from sparse_tf.data.encode import prepare_lock
from sparse_tf.data.sources import open_corpus
from sparse_tf.data.synthetic import symbol_tokenizer
from sparse_tf.data.token_dir import TOKENS_PREFIX, map_tokens, token_corpus, token_files
from sparse_tf.data.tokenizer import (
    TokenizerNotPreparedError,
    corpus_bpe,
    eot_id,
    gpt2_bpe,
    load_tokenizer,
    tokenizer_digest,
)
from sparse_tf.data.tokens import (
    NotPreparedError,
    TokenDataError,
    TokenShards,
    Windows,
    pack_corpus,
)
from sparse_tf.filenames import TOKENIZER_FILE
from sparse_tf.io import ProgressMode, cache_dir, progress_style


@dataclass(frozen=True)
class Data:
    """A prepared corpus: the tokenizer and both splits as packed token windows."""

    corpus: Corpus
    tokenizer: Tokenizer
    train: Windows
    val: Windows | None
    """None when val_frac is 0."""

    def summary(self) -> dict[str, Any]:
        val = self.val.tokens if self.val is not None else None
        return {
            "corpus": corpus_summary(self.corpus, self.train.tokens, val),
            "tokenizer": {
                "vocab_size": self.tokenizer.get_vocab_size(),
                "sha256": tokenizer_digest(self.tokenizer),
            },
            "train_tokens": len(self.train.tokens),
            "val_tokens": len(self.val.tokens) if self.val is not None else 0,
        }


def corpus_summary(corpus: Corpus, train: TokenShards, val: TokenShards | None) -> dict[str, Any]:
    """`corpus.summary()`, with what the corpus cannot count without reading every document
    (a stream's size, a Hub dataset's splits) taken from its token store, which counted the
    documents when it was written (older stores did not: those stay None)."""
    summary = corpus.summary()
    stored = {
        "train_documents": train.documents,
        "val_documents": val.documents if val is not None else 0,
    }
    for key, count in stored.items():
        if summary[key] is None:
            summary[key] = count
    if summary["documents"] is None and None not in stored.values():
        summary["documents"] = sum(stored.values())  # type: ignore[arg-type]
    return summary


def prepare_data(
    cfg: DataConfig,
    vocab_size: int,
    n_ctx: int,
    *,
    tokenizer: Tokenizer | None = None,
    reserved_tokens: Sequence[str] | None = None,
    cache: Path | None = None,
    build: bool = True,
    workers: int | None = None,
    progress: ProgressMode = "none",
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
        build: train the tokenizer and write the token store when missing (`prepare_tokens`);
            off, a missing one is a NotPreparedError naming the `sparse-tf data prepare`
            command that builds them.
        workers: tokenising processes (default: every core).
        progress: how to report opening the corpus, training the tokenizer and tokenising on
            stderr (`sparse_tf.io.ProgressMode`): what `sparse-tf data prepare` shows.
    """
    corpus, tokenizer, shards = prepare_tokens(
        cfg,
        vocab_size,
        tokenizer=tokenizer,
        reserved_tokens=reserved_tokens,
        cache=cache,
        build=build,
        workers=workers,
        progress=progress,
    )
    train = _windows(shards["train"], n_ctx, tokenizer, cfg.source, "train")
    val = _windows(shards["val"], n_ctx, tokenizer, cfg.source, "val") if cfg.val_frac else None
    return Data(corpus=corpus, tokenizer=tokenizer, train=train, val=val)


def prepare_tokens(
    cfg: DataConfig,
    vocab_size: int,
    *,
    tokenizer: Tokenizer | None = None,
    reserved_tokens: Sequence[str] | None = None,
    cache: Path | None = None,
    build: bool = True,
    workers: int | None = None,
    progress: ProgressMode = "none",
) -> tuple[Corpus, Tokenizer, dict[Split, TokenShards]]:
    """The corpus, its tokenizer and its token store (what `sparse-tf data prepare` writes);
    arguments as for `prepare_data`. Building holds the cache's prepare lock, so that
    processes sharing a cache (the ranks of one machine) build each store once."""
    cache = cache or cache_dir()
    if cfg.source.startswith(TOKENS_PREFIX):  # already tokens: nothing to build
        corpus, tokenizer, shards = _token_dir(cfg, tokenizer)
        _check_tokenizer_size(tokenizer, vocab_size)
        for split in shards.values():
            split.check_vocab(vocab_size)
        return corpus, tokenizer, shards
    say = _say if progress_style(progress) != "none" else None
    started = time.monotonic()
    if say:
        say(f"opening {cfg.source} ...")
    corpus = open_corpus(
        cfg.source,
        cfg.val_frac,
        text_field=cfg.text_field,
        hf_split=cfg.hf_split,
        streaming=cfg.streaming,
    )
    if say:
        docs = f"{corpus.size:,} documents" if corpus.size is not None else "streamed"
        say(f"{cfg.source}: {docs}, digest {corpus.digest[:12]} ({_since(started)})")
    with prepare_lock(cache) if build else contextlib.nullcontext():
        try:
            if tokenizer is None:
                started = time.monotonic()
                tokenizer = _tokenizer(cfg, corpus, vocab_size, reserved_tokens, cache, build, say)
                if say:
                    say(f"tokenizer: {tokenizer.get_vocab_size()} tokens ({_since(started)})")
            _check_tokenizer_size(tokenizer, vocab_size)
            shards = pack_corpus(
                corpus, tokenizer, cache, build=build, workers=workers, progress=progress
            )
        except (NotPreparedError, TokenizerNotPreparedError):
            raise NotPreparedError(
                f"data.source={cfg.source!r} is not prepared in {cache}: run "
                f"`{prepare_command(cfg, vocab_size)}` first (with the same SPARSE_TF_CACHE)"
            ) from None
    for split in shards.values():
        split.check_vocab(vocab_size)
    return corpus, tokenizer, shards


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


def _check_tokenizer_size(tokenizer: Tokenizer, vocab_size: int) -> None:
    if tokenizer.get_vocab_size() > vocab_size:
        raise TokenDataError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size "
            f"is {vocab_size}; set --model.vocab-size {tokenizer.get_vocab_size()}"
        )


def _token_dir(
    cfg: DataConfig, tokenizer: Tokenizer | None
) -> tuple[Corpus, Tokenizer, dict[Split, TokenShards]]:
    """`tokens:DIR` (`sparse_tf.data.token_dir`): its files memory-mapped, and its tokenizer."""
    folder, files, bin_dtype = token_files(cfg.source, cfg.val_frac)
    if tokenizer is None:
        if (folder / TOKENIZER_FILE).is_file():
            tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        elif cfg.tokenizer == "gpt2":
            tokenizer = gpt2_bpe(cfg.gpt2_files)
        else:
            raise CorpusError(
                f"data.source={cfg.source!r}: no {folder / TOKENIZER_FILE}; add the tokenizer "
                "the ids come from, or pass --data.tokenizer gpt2 for GPT-2's"
            )
    shards = {
        split: TokenShards.of(paths, (map_tokens(p, bin_dtype) for p in paths))
        for split, paths in files.items()
    }
    return token_corpus(cfg.source, cfg.val_frac), tokenizer, shards


def _tokenizer(
    cfg: DataConfig,
    corpus: Corpus,
    vocab_size: int,
    reserved_tokens: Sequence[str] | None,
    cache: Path,
    build: bool,
    say: Callable[[str], None] | None,
) -> Tokenizer:
    if corpus.info.get("kind") == "process":  # symbols of a synthetic process
        return symbol_tokenizer(corpus.info["symbols"])
    if cfg.tokenizer == "gpt2":
        return gpt2_bpe(cfg.gpt2_files)
    if cfg.task_tokens and reserved_tokens is None:
        raise ValueError(
            "prepare_data: data.task_tokens is on: pass reserved_tokens "
            "(sparse_tf.tasks.task_tokens())"
        )
    reserved = list(reserved_tokens or ()) if cfg.task_tokens else []
    return corpus_bpe(corpus, vocab_size, cache, reserved, build=build, say=say)


def prepare_command(cfg: DataConfig, vocab_size: int) -> str:
    """The `sparse-tf data prepare` command line that prepares `cfg` for `vocab_size`."""
    words = ["sparse-tf", "data", "prepare", "--vocab-size", str(vocab_size)]
    default = DataConfig()
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if value == getattr(default, field.name) and field.name != "source":
            continue
        flag = "--data." + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--data.no-{field.name.replace('_', '-')}")
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def _windows(tokens: TokenShards, n_ctx: int, tok: Tokenizer, source: str, split: str) -> Windows:
    windows = Windows(tokens, n_ctx, pad_id=eot_id(tok))
    if len(windows) == 0:
        raise TokenDataError(f"data.source={source!r}: the {split} split has fewer than 2 tokens")
    return windows
