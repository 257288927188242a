"""Tokenising a corpus into a token store with worker processes, resumably.

The main process reads the documents of a split in corpus order and cuts them into chunks of
about CHUNK_CHARS characters; worker processes encode the chunks and write each one as a part
file (`parts/train-000012.npy`, under a temporary name, then renamed). A killed prepare keeps
its finished parts: the next one reads the documents again (cheap) but encodes only the chunks
whose part is missing. Once every part exists, the parts are copied in order into the store's
shards of exactly `shard_tokens` tokens (the last one shorter), so the token stream, and every
shard file, is the same whatever the number of workers, and the same as one process writes.

Memory is bounded by the chunks in flight (two per worker) and does not grow with the corpus.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from sparse_tf.data.corpus import Corpus, Split
from sparse_tf.data.tokenizer import MAX_PIECE, eot_id, pieces, tokenizer_digest
from sparse_tf.data.word_cache import Encode, WordCacheEncoder, library_encoder
from sparse_tf.errors import SparseTFError
from sparse_tf.io import (
    ProgressMode,
    progress_style,
    publish_dir,
    read_json,
    remove_dir,
    waiting_lock,
    write_json,
)

CHUNK_CHARS = 1 << 22
"""Characters per chunk (a part file): about a million tokens, a second or two of one core's
work, so that a kill loses little and many workers stay busy."""
_ENCODE_BATCH = 256
_IN_FLIGHT = 2
"""Chunks queued per worker: enough to keep it busy, few enough to bound the memory."""
SPLITS: tuple[Split, ...] = ("train", "val")


class EncodeError(SparseTFError):
    """A tokenising worker failed; the message says how to go on."""


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def token_dtype(tok: Tokenizer) -> type[np.unsignedinteger]:
    return np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32


def batch_encoder(tok: Tokenizer, dtype: Any) -> Encode:
    """The fastest way to the ids `tok.encode_batch(texts, add_special_tokens=False)` gives:
    the word cache (`word_cache`) where it gives the same ids, else the library itself."""
    words = WordCacheEncoder.for_tokenizer(tok, dtype)
    return words.encode if words is not None else library_encoder(tok, dtype)


def encode_documents(
    tok: Tokenizer, texts: Iterable[str], dtype: Any, encode: Encode | None = None
) -> np.ndarray:
    """The packed tokens of `texts`: each text's ids, then `<|endoftext|>`; `encode` is
    `batch_encoder(tok, dtype)` unless given (one per process keeps its word cache).

    Texts are encoded in batches of at most _ENCODE_BATCH pieces and MAX_PIECE characters (a
    long text in `pieces`): an encoding holds ~150 bytes per token until its ids are copied
    out, so memory stays bounded whatever the documents."""
    eot = np.array([eot_id(tok)], dtype)
    out: list[np.ndarray] = []
    batch: list[str] = []
    lasts: list[bool] = []
    chars = 0
    encode = encode or batch_encoder(tok, dtype)

    def flush() -> None:
        for ids, last in zip(encode(batch), lasts, strict=True):
            out.append(ids)
            if last:
                out.append(eot)

    for text in texts:
        parts = list(pieces(text))
        for i, piece in enumerate(parts):
            if batch and (len(batch) == _ENCODE_BATCH or chars + len(piece) > MAX_PIECE):
                flush()
                batch, lasts, chars = [], [], 0
            batch.append(piece)
            lasts.append(i == len(parts) - 1)
            chars += len(piece)
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros(0, dtype)


def chunks(texts: Iterable[str], chunk_chars: int | None = None) -> Iterator[list[str]]:
    """Consecutive documents, cut into lists of at least `chunk_chars` (default CHUNK_CHARS)
    characters (the last may be shorter): the same cuts for the same documents, always."""
    chunk_chars = chunk_chars or CHUNK_CHARS
    chunk: list[str] = []
    chars = 0
    for text in texts:
        chunk.append(text)
        chars += len(text)
        if chars >= chunk_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# -- worker processes ---------------------------------------------------------------------------

_worker_tok: Tokenizer | None = None
_worker_dtype: Any = None
_worker_encode: Encode | None = None


def _init_worker(spec: str) -> None:
    global _worker_tok, _worker_dtype, _worker_encode
    _worker_tok = Tokenizer.from_str(spec)
    _worker_dtype = token_dtype(_worker_tok)
    _worker_encode = batch_encoder(_worker_tok, _worker_dtype)


def _encode_part(path: str, texts: list[str]) -> int:
    """Encode one chunk into the part file `path` (complete or absent); its token count."""
    assert _worker_tok is not None
    ids = encode_documents(_worker_tok, texts, _worker_dtype, _worker_encode)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, ids)
    os.replace(tmp, path)
    return len(ids)


@contextlib.contextmanager
def _pool(tok: Tokenizer, workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    # Each worker encodes on one thread (the workers are the parallelism); setting this before
    # the fork also keeps `tokenizers` from warning that the parent's thread pool was forked.
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        # fork: a worker needs only the tokenizer; spawning would re-import torch in each.
        with cf.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_worker,
            initargs=(tok.to_str(),),
        ) as pool:
            yield pool
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """Documents, tokens, tokens/s and ETA of a prepare on stderr, as `mode` says
    (`sparse_tf.io.ProgressMode`): a bar, or one line per phase and one every `every` seconds,
    or nothing."""

    def __init__(self, total_docs: int | None, mode: ProgressMode, every: float = 30.0) -> None:
        style = progress_style(mode)
        self.enabled, self.tty, self.every = style != "none", style == "bar", every
        self.docs = self.tokens = self.new_tokens = 0
        self.start = self.last_line = time.monotonic()
        self.bar = tqdm(total=total_docs, unit="doc", disable=not self.tty, file=sys.stderr)

    def line(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                self.bar.write(text, file=sys.stderr)  # above the bar (tqdm's default: stdout)
            else:
                _eprint(text)

    def update(self, docs: int, tokens: int, *, encoded: bool) -> None:
        self.docs += docs
        self.tokens += tokens
        self.new_tokens += tokens if encoded else 0
        if self.tty:
            self.bar.set_postfix_str(f"{self.tokens:,} tokens, {self.rate():,.0f} tokens/s")
            self.bar.update(docs)
        elif self.enabled and time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            _eprint(self.status())

    def rate(self) -> float:
        return self.new_tokens / max(time.monotonic() - self.start, 1e-9)

    def status(self) -> str:
        eta = ""
        total = self.bar.total
        if total and self.docs and self.rate() > 0:
            left = (time.monotonic() - self.start) * (total - self.docs) / self.docs
            eta = f", ETA {left:,.0f} s"
        of = f"/{total:,}" if total else ""
        return (
            f"  {self.docs:,}{of} documents, {self.tokens:,} tokens, "
            f"{self.rate():,.0f} tokens/s{eta}"
        )

    def close(self) -> None:
        self.bar.close()


def _eprint(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the store ----------------------------------------------------------------------------------


def write_store(
    corpus: Corpus,
    tok: Tokenizer,
    folder: Path,
    shard_tokens: int,
    *,
    workers: int | None = None,
    progress: ProgressMode = "none",
) -> None:
    """Tokenise both splits of `corpus` into the store `folder` (meta.json and .npy shards),
    built in a hidden sibling `.NAME.partial` that a later call resumes, then renamed.

    Args:
        workers: encoding processes (default: every core this process may use).
        progress: how to report progress on stderr (see `Progress`).
    """
    work = folder.with_name(f".{folder.name}.partial")
    plan = {
        "corpus": corpus.digest,
        "tokenizer": tokenizer_digest(tok),
        "shard_tokens": shard_tokens,
        "chunk_chars": CHUNK_CHARS,
    }
    parts = work / "parts"
    if work.is_dir() and _read_plan(work) != plan:
        remove_dir(work)  # parts of another recipe (only this module writes there)
    parts.mkdir(parents=True, exist_ok=True)
    write_json(work / "plan.json", plan)
    dtype = token_dtype(tok)
    n = workers or default_workers()
    report = Progress(corpus.size, progress)
    docs = f"{corpus.size:,} documents" if corpus.size is not None else "a streamed corpus"
    report.line(f"tokenising {docs} with {n} worker processes into {folder}")
    try:
        encoded = _encode_parts(corpus, tok, parts, n, report)
    finally:
        report.close()
    report.line(report.status().strip())
    report.line("writing shards")
    meta: dict[str, Any] = {
        "corpus": corpus.digest,
        "tokenizer": plan["tokenizer"],
        # Counted while encoding: a streamed corpus knows them only once it has been read.
        "documents": {split: docs for split, (_, docs) in encoded.items()},
        "splits": {},
    }
    for split, (counts, _) in encoded.items():
        meta["splits"][split] = _assemble(parts, split, counts, work, shard_tokens, dtype)
    shutil.rmtree(parts)
    (work / "plan.json").unlink()
    write_json(work / "meta.json", meta)
    publish_dir(work, folder)


def _read_plan(work: Path) -> Any:
    try:
        return read_json(work / "plan.json")
    except ValueError:
        return None


def _encode_parts(
    corpus: Corpus, tok: Tokenizer, parts: Path, workers: int, report: Progress
) -> dict[Split, tuple[list[int], int]]:
    """Encode every chunk whose part file is missing; per split, the token count of every
    part, in order, and the number of documents.

    The splits share one queue: the validation chunks are handed out while the last training
    chunks are still encoding, so that no worker waits for the slowest one between splits."""
    sizes: dict[Split, dict[int, int]] = {split: {} for split in SPLITS}
    n_docs = dict.fromkeys(SPLITS, 0)
    pending: dict[cf.Future[int], tuple[Split, int, int]] = {}

    def collect(done: Iterable[cf.Future[int]]) -> None:
        for future in done:
            split, index, docs = pending.pop(future)
            try:
                sizes[split][index] = future.result()
            except cf.process.BrokenProcessPool:
                raise EncodeError(
                    "a tokenising worker died (out of memory? use fewer --workers); run the "
                    "same command again to resume"
                ) from None
            report.update(docs, sizes[split][index], encoded=True)

    with _pool(tok, workers) as pool:
        for split in SPLITS:
            for index, chunk in enumerate(chunks(corpus.documents(split))):
                n_docs[split] += len(chunk)
                path = parts / f"{split}-{index:06d}.npy"
                if path.is_file():  # finished by an earlier, interrupted prepare
                    sizes[split][index] = len(np.load(path, mmap_mode="r"))
                    report.update(len(chunk), sizes[split][index], encoded=False)
                    continue
                while len(pending) >= _IN_FLIGHT * workers:
                    collect(cf.wait(pending, return_when=cf.FIRST_COMPLETED).done)
                pending[pool.submit(_encode_part, str(path), chunk)] = (split, index, len(chunk))
        collect(cf.as_completed(list(pending)))
    return {
        split: ([sizes[split][i] for i in range(len(sizes[split]))], n_docs[split])
        for split in SPLITS
    }


def _assemble(
    parts: Path, split: str, counts: list[int], out: Path, shard_tokens: int, dtype: Any
) -> list[dict[str, int | str]]:
    """Copy the parts of `split`, in order, into shards of `shard_tokens` (the remainder last;
    one empty shard when there is no token). Returns [{"file", "tokens", "max_id"}] (max_id -1
    for an empty shard), the largest id found while copying: the trainer checks it against the
    model's vocabulary without reading the shards."""
    total = sum(counts)
    sizes = [shard_tokens] * (total // shard_tokens)
    if total % shard_tokens or not total:
        sizes.append(total % shard_tokens)
    sources = (np.load(parts / f"{split}-{i:06d}.npy", mmap_mode="r") for i in range(len(counts)))
    current, offset = np.zeros(0, dtype), 0
    shards: list[dict[str, int | str]] = []
    for k, size in enumerate(sizes):
        name = f"{split}-{k:05d}.npy"
        top = -1
        if size == 0:
            np.save(out / name, np.zeros(0, dtype))
        else:
            shard = np.lib.format.open_memmap(out / name, mode="w+", dtype=dtype, shape=(size,))
            filled = 0
            while filled < size:
                if offset == len(current):
                    current, offset = next(sources), 0
                take = min(size - filled, len(current) - offset)
                piece = current[offset : offset + take]
                shard[filled : filled + take] = piece
                top = max(top, int(piece.max())) if take else top
                filled, offset = filled + take, offset + take
            shard.flush()
            del shard
        shards.append({"file": name, "tokens": size, "max_id": top})
    return shards


def prepare_lock(cache: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the cache's prepare lock: one process at a time trains tokenizers and writes
    token stores in `cache` (others wait here, outside any collective), so that the ranks of
    one machine, or two commands, never tokenise the same corpus twice at once."""
    return waiting_lock(
        cache / ".prepare.lock", f"waiting for another process preparing data in {cache} ..."
    )
