"""Text corpora: the Python standard library (the offline default), local files, `datasets`.

A corpus is an ordered list of documents, each with a stable key (a relative path, or a row
index), split into train and validation by a hash of the key: adding or removing one file never
moves any other file across the split. Every corpus has a `digest` that changes whenever a
document's key or bytes (or the split) change; tokenizers and token shards are cached by it and
every run records it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sparse_tf.errors import SparseTFError
from sparse_tf.extras import require

Split = Literal["train", "val"]
STDLIB = "python-stdlib"
HF_PREFIX = "hf:"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_BATCH = 1024
"""Rows of a `datasets` corpus read at a time."""


class CorpusError(SparseTFError):
    """The corpus source is missing, empty or unreadable; the message names it."""


def split_of(key: str, val_frac: float) -> Split:
    """'val' for a fraction ≈ val_frac of keys, chosen by a hash of the key (stable forever)."""
    return _split_of_hash(hashlib.sha256(key.encode()).digest(), val_frac)


def _split_of_hash(h: bytes, val_frac: float) -> Split:
    return "val" if int.from_bytes(h[:8], "big") / 2**64 < val_frac else "train"


@dataclass(frozen=True)
class Splitter:
    """The split rule of one corpus: `split_of` of each key, except `fallback`, the key sent to
    validation because no key fell below val_frac (see `SplitScan`)."""

    val_frac: float
    fallback: str | None = None

    def __call__(self, key: str) -> Split:
        return "val" if key == self.fallback else split_of(key, self.val_frac)


class SplitScan:
    """The split rule and per-split counts of a corpus whose keys are seen once, in order,
    keeping nothing per key (a corpus may hold billions of documents).

    Every key goes where `split_of` sends it, except that when none falls below val_frac the
    key with the smallest hash goes to validation, so any corpus of two or more documents has a
    validation split. With `record`, the split letters ('t'/'v') are kept, spilled to a
    temporary file beyond 1 MiB, for `update_digest`.
    """

    def __init__(self, source: str, val_frac: float, *, record: bool = False) -> None:
        self.source, self.val_frac = source, val_frac
        self.counts: dict[Split, int] = {"train": 0, "val": 0}
        self._smallest: tuple[bytes, int, str] | None = None  # hash, position, key
        # Closed by update_digest (or when collected, after an error).
        spool = tempfile.SpooledTemporaryFile(max_size=1 << 20) if record else None  # noqa: SIM115
        self._letters = spool
        self._fallback: str | None = None

    @property
    def size(self) -> int:
        return self.counts["train"] + self.counts["val"]

    @property
    def decided(self) -> bool:
        """Whether both splits have a key, which fixes the rule whatever keys follow."""
        return self.counts["train"] > 0 and (self.counts["val"] > 0 or self.val_frac == 0)

    def add(self, key: str) -> None:
        h = hashlib.sha256(key.encode()).digest()
        split = _split_of_hash(h, self.val_frac)
        if self._smallest is None or h < self._smallest[0]:
            self._smallest = (h, self.size, key)
        self.counts[split] += 1
        if self._letters is not None:
            self._letters.write(split[0].encode())

    def finish(self) -> Splitter:
        """The rule, once every key was added; a CorpusError naming the source when the keys
        cannot be split (one document) or nothing is left to train on."""
        where = f"data.source={self.source!r}"
        if self.size == 0:
            raise CorpusError(f"{where}: holds no document")
        if self.val_frac > 0 and not self.counts["val"]:
            if self.size < 2:
                raise CorpusError(
                    f"{where}: one document cannot be split into train and validation; add "
                    "documents or set --data.val-frac 0"
                )
            assert self._smallest is not None
            self._fallback = self._smallest[2]  # the first key to enter 'val' as val_frac grows
            self.counts = {"train": self.size - 1, "val": 1}
        if not self.counts["train"]:
            raise CorpusError(f"{where}: every document fell into validation")
        return Splitter(self.val_frac, self._fallback)

    def update_digest(self, digest: Any) -> None:
        """Feed the split letter of every key, in order, to `digest` (after `finish`)."""
        assert self._letters is not None
        if self._fallback is not None:  # every natural letter was 't'
            assert self._smallest is not None
            at = self._smallest[1]
            letters: Iterable[bytes] = (b"t" * at, b"v", b"t" * (self.size - at - 1))
        else:
            self._letters.seek(0)
            letters = iter(lambda: self._letters.read(1 << 20), b"")  # type: ignore[union-attr]
        for block in letters:
            digest.update(block)
        self._letters.close()


@dataclass(frozen=True)
class Corpus:
    """Documents of one source, in a fixed order, with their split, read afresh on every pass:
    nothing per document is held, so memory does not grow with the corpus.

    Attributes:
        source: what the user asked for ("python-stdlib", a path or glob, "hf:NAME").
        digest: sha256 over the source kind, every key, every document's bytes and the split
            (a `datasets` corpus: its fingerprint, or its builder's hash when streamed).
        info: facts recorded with the run (root, byte counts, ...).
        size: the number of documents; None when unknown before reading them all (a stream).
        counts: the documents of each split, when known without reading them all.
    """

    source: str
    digest: str
    info: dict[str, Any]
    size: int | None
    counts: dict[Split, int] | None
    _entries: Callable[[], Iterator[tuple[str, Split]]]  # (key, split) of every document
    _documents: Callable[[Split], Iterator[str]]  # texts of one split, in corpus order

    def documents(self, split: Split) -> Iterator[str]:
        """Texts of the documents in `split`, in corpus order (read now)."""
        return self._documents(split)

    def entries(self) -> Iterator[tuple[str, Split]]:
        """The key and split of every document, in corpus order (read now)."""
        return self._entries()

    def count(self, split: Split) -> int | None:
        return self.counts[split] if self.counts is not None else None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "digest": self.digest,
            "documents": self.size,
            "train_documents": self.count("train"),
            "val_documents": self.count("val"),
            **self.info,
        }


def text_corpus(
    source: str,
    val_frac: float,
    *,
    text_field: str = "text",
    hf_split: str = "train",
    streaming: bool = False,
) -> Corpus:
    """A corpus of text documents (`open_corpus` takes every source, synthetic ones too).

    Args:
        source: "python-stdlib" (the running interpreter's standard library, .py files only, no
            site-packages); a directory (every non-hidden text file below it); a glob such as
            "docs/**/*.md"; a single file; or "hf:NAME" for a `datasets` dataset by hub name or
            local path (a folder saved with `save_to_disk`, or one `load_dataset` reads).
        val_frac: expected fraction of documents in the validation split (`SplitScan`).
        text_field: column holding the text (datasets only).
        hf_split: which split of the dataset to read (datasets only).
        streaming: read a `load_dataset` dataset as a stream, never downloaded whole (datasets
            only; a `save_to_disk` folder is memory-mapped either way).
    """
    if source == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        info = {
            "kind": "python-stdlib",
            "python": sys.version.split()[0],
            "root": root.name,
        }
        return _file_corpus(source, lambda: _walk(root, suffix=".py"), val_frac, info)
    if source.startswith(HF_PREFIX):
        return _hf_corpus(source, val_frac, text_field, hf_split, streaming)
    if any(c in source for c in "*?["):
        # A glob's matches are listed (and sorted) once: for a corpus of millions of files,
        # name its directory instead, which is walked one folder at a time.
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"data.source={source!r}: the glob matched no files")
        root = Path(os.path.commonpath([p.parent.resolve() for p in files]))
        listed = [(p.resolve().relative_to(root).as_posix(), str(p.resolve())) for p in files]
        return _file_corpus(source, lambda: iter(listed), val_frac, {"kind": "glob"})
    path = Path(source)
    if path.is_dir():
        root = path.resolve()
        return _file_corpus(source, lambda: _walk(root), val_frac, {"kind": "dir"})
    if path.is_file():
        file = path.resolve()
        one = [(file.name, str(file))]
        return _file_corpus(source, lambda: iter(one), val_frac, {"kind": "file"})
    raise CorpusError(
        f"data.source={source!r}: no such file or directory (expected {STDLIB!r}, a directory, "
        f"a glob, a file, {HF_PREFIX}NAME for a datasets dataset, or process:NAME)"
    )


def _walk(root: Path, suffix: str | None = None) -> Iterator[tuple[str, str]]:
    """(relative POSIX path, path) of the regular files under `root` in sorted relative-path
    order, skipping hidden entries, caches and installed third-party packages; lazily, one
    directory's listing at a time (plain strings: pathlib would intern every name)."""
    yield from _walk_dir(str(root), "", suffix)


def _walk_dir(folder: str, prefix: str, suffix: str | None) -> Iterator[tuple[str, str]]:
    try:
        with os.scandir(folder) as listing:
            # A directory sorts as its name + "/": where its files fall in a sort of whole
            # relative paths (no file name holds a "/"), so this walk yields that order.
            entries = sorted(
                (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                for e in listing
                if not e.name.startswith(".")
            )
    except OSError:  # unreadable: skipped, as os.walk does
        return
    for name, entry in entries:
        if name.endswith("/"):
            if entry.name not in _SKIP_DIRS:
                yield from _walk_dir(entry.path, prefix + name, suffix)
            continue
        regular = entry.is_file() and not entry.is_symlink()  # is_file follows links
        if regular and (suffix is None or name.endswith(suffix)):
            yield prefix + name, entry.path


def _decode(data: bytes) -> str:
    # A few stdlib files are deliberately not UTF-8 (encoding tests); keep them, replaced.
    return data.decode("utf-8", errors="replace")


def _read(source: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CorpusError(f"data.source={source!r}: cannot read {path}: {e.strerror}") from None


def _binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


def _document(data: bytes) -> bool:
    """Whether a file's bytes are a document: text (no NUL near the start), not blank."""
    return not _binary(data) and bool(data.strip())


def _file_corpus(
    source: str,
    files: Callable[[], Iterator[tuple[str, str]]],
    val_frac: float,
    info: dict[str, Any],
) -> Corpus:
    """The corpus of the text files that `files()` lists as (key, path), again on every pass;
    opening reads each once, for the digest."""
    digest = hashlib.sha256(f"files\0{val_frac!r}\0".encode())
    scan = SplitScan(source, val_frac, record=True)
    listed = skipped = size = 0
    for key, path in files():
        listed += 1
        data = _read(source, path)
        if not _document(data):
            skipped += _binary(data)
            continue
        scan.add(key)
        size += len(data)
        digest.update(key.encode() + b"\0" + hashlib.sha256(data).digest())
    if not scan.size:
        what = "holds no non-empty text file" if listed else "holds no file"
        raise CorpusError(f"data.source={source!r}: {what}")
    splitter = scan.finish()
    scan.update_digest(digest)
    counts = dict(scan.counts)

    def entries() -> Iterator[tuple[str, Split]]:
        for key, path in files():
            if _document(_read(source, path)):
                yield key, splitter(key)

    def documents(split: Split) -> Iterator[str]:
        n = 0
        for key, path in files():
            if splitter(key) == split and _document(data := _read(source, path)):
                n += 1
                yield _decode(data)
        if n != counts[split]:
            raise CorpusError(
                f"data.source={source!r}: files were added, removed or emptied since it was "
                f"opened ({n:,} {split} documents, {counts[split]:,} before); run again"
            )

    return Corpus(
        source=source,
        digest=digest.hexdigest(),
        info={**info, "bytes": size, "binary_skipped": skipped},
        size=scan.size,
        counts=counts,
        _entries=entries,
        _documents=documents,
    )


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _one_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _hf_corpus(
    source: str, val_frac: float, text_field: str, hf_split: str, streaming: bool
) -> Corpus:
    """A `datasets` dataset, one document per row, keyed "SPLIT/ROW". Rows are read in batches
    on every pass; the split rule needs only the first rows (`_row_splitter`)."""
    name = source[len(HF_PREFIX) :]
    if not name:
        raise CorpusError(f"data.source={source!r}: name a dataset after {HF_PREFIX!r}")
    # A heavy import (pyarrow, pandas), and an optional one: only for this source.
    datasets = require("datasets", "hf", f"data.source={source!r}")

    local = Path(name)
    identity = None  # a streamed dataset's builder: name, config and data files' version
    try:
        if local.is_dir() and (
            (local / "dataset_info.json").exists() or (local / "state.json").exists()
        ):
            ds = datasets.load_from_disk(str(local))  # memory-mapped: streaming changes nothing
            if isinstance(ds, datasets.DatasetDict):
                if hf_split not in ds:
                    raise CorpusError(
                        f"data.source={source!r}: no split {hf_split!r} (has {sorted(ds)})"
                    )
                ds = ds[hf_split]
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
            if not local.exists() and not offline and not hub_reachable():
                raise CorpusError(
                    f"data.source={source!r}: not a local dataset and the Hugging Face hub is "
                    "unreachable; set HF_HUB_OFFLINE=1 to use the local cache"
                )
            if streaming:
                # What load_dataset(..., streaming=True) does, keeping the builder, whose hash
                # (the hub commit, or the local files' times) identifies the data unread.
                builder = datasets.load_dataset_builder(name)
                ds = builder.as_streaming_dataset(split=hf_split)
                identity = f"{builder.name}\0{builder.config_id}\0{builder.hash}"
            else:
                ds = datasets.load_dataset(name, split=hf_split)
    except CorpusError:
        raise
    except Exception as e:  # datasets raises many types; report one line naming the source
        message = _one_line(e)
        raise CorpusError(f"data.source={source!r}: cannot load the dataset: {message}") from None
    if isinstance(ds, datasets.IterableDataset):
        return _hf_stream(source, ds, val_frac, text_field, hf_split, identity or name)
    if text_field not in ds.column_names:
        raise CorpusError(
            f"data.source={source!r}: no column {text_field!r} (columns {ds.column_names}); "
            "choose one with --data.text-field"
        )
    if len(ds) == 0:
        raise CorpusError(f"data.source={source!r}: the dataset is empty")
    splitter = _row_splitter(source, hf_split, range(len(ds)), val_frac)
    # datasets fingerprints a dataset by its content and history; stable across processes.
    digest = hashlib.sha256(
        f"hf\0{name}\0{hf_split}\0{text_field}\0{ds._fingerprint}\0{val_frac!r}".encode()
    ).hexdigest()
    column = ds.select_columns([text_field]).with_format("arrow")

    def documents(split: Split) -> Iterator[str]:
        row = 0
        for table in column.iter(batch_size=_BATCH):
            keep = [i for i in range(table.num_rows) if splitter(f"{hf_split}/{row + i}") == split]
            row += table.num_rows
            for text in table.column(0).take(keep).to_pylist():
                yield text if isinstance(text, str) else ""

    return Corpus(
        source=source,
        digest=digest,
        info={"kind": "datasets", "rows": len(ds), "split": hf_split, "field": text_field},
        size=len(ds),
        counts=None,  # hashing every row's key at each opening would take minutes
        _entries=lambda: _row_entries(hf_split, range(len(ds)), splitter),
        _documents=documents,
    )


def _row_splitter(source: str, hf_split: str, rows: Iterable[Any], val_frac: float) -> Splitter:
    """The split rule of rows keyed "SPLIT/ROW": `SplitScan` over the first rows until both
    splits have one (then the rule is plain `split_of`; usually after ~1/val_frac rows), or
    over all of them, for a dataset too small to decide earlier."""
    scan = SplitScan(source, val_frac)
    for i, _ in enumerate(rows):
        scan.add(f"{hf_split}/{i}")
        if scan.decided:
            return Splitter(val_frac)
    return scan.finish()


def _row_entries(
    hf_split: str, rows: Iterable[Any], splitter: Splitter
) -> Iterator[tuple[str, Split]]:
    for i, _ in enumerate(rows):
        key = f"{hf_split}/{i}"
        yield key, splitter(key)


def _hf_stream(
    source: str, ds: Any, val_frac: float, text_field: str, hf_split: str, identity: str
) -> Corpus:
    """A streamed `datasets.IterableDataset`: read from its first row on every pass, in the
    order `datasets` yields it (its files in order, no shuffling), so the documents, their keys
    and their split are those of the same dataset loaded whole."""
    try:
        first = next(iter(ds), None)
    except Exception as e:  # datasets raises many types; report one line naming the source
        message = _one_line(e)
        raise CorpusError(f"data.source={source!r}: cannot read the stream: {message}") from None
    if first is None:
        raise CorpusError(f"data.source={source!r}: the dataset is empty")
    if text_field not in first:
        raise CorpusError(
            f"data.source={source!r}: no column {text_field!r} (columns {list(first)}); "
            "choose one with --data.text-field"
        )
    column = ds.select_columns([text_field])

    def texts() -> Iterator[str]:
        try:
            for batch in column.iter(batch_size=_BATCH):
                for text in batch[text_field]:
                    yield text if isinstance(text, str) else ""
        except Exception as e:  # a network or file error mid-stream: one line, and resumable
            raise CorpusError(
                f"data.source={source!r}: reading the stream failed: {_one_line(e)}; run again "
                "to resume"
            ) from None

    splitter = _row_splitter(source, hf_split, texts(), val_frac)
    digest = hashlib.sha256(
        f"hf-stream\0{identity}\0{hf_split}\0{text_field}\0{val_frac!r}".encode()
    ).hexdigest()

    def documents(split: Split) -> Iterator[str]:
        for i, text in enumerate(texts()):
            if splitter(f"{hf_split}/{i}") == split:
                yield text

    return Corpus(
        source=source,
        digest=digest,
        info={"kind": "datasets", "streaming": True, "split": hf_split, "field": text_field},
        size=None,
        counts=None,
        _entries=lambda: _row_entries(hf_split, texts(), splitter),
        _documents=documents,
    )
