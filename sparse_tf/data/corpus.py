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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sparse_tf.errors import SparseTFError

Split = Literal["train", "val"]
STDLIB = "python-stdlib"
HF_PREFIX = "hf:"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class CorpusError(SparseTFError):
    """The corpus source is missing, empty or unreadable; the message names it."""


def split_of(key: str, val_frac: float) -> Split:
    """'val' for a fraction ≈ val_frac of keys, chosen by a hash of the key (stable forever)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_frac else "train"


@dataclass(frozen=True)
class Corpus:
    """Documents of one source, in a fixed order, with their split.

    Attributes:
        source: what the user asked for ("python-stdlib", a path or glob, "hf:NAME").
        keys: one stable key per document, in corpus order.
        splits: the split of each document (same order as `keys`).
        digest: sha256 over the source kind, every key, every document's bytes and the split.
        info: facts recorded with the run (root, document and byte counts, ...).
    """

    source: str
    keys: tuple[str, ...]
    splits: tuple[Split, ...]
    digest: str
    info: dict[str, Any]
    _read: Callable[[list[int]], Iterator[str]]  # texts of the documents at these positions

    def documents(self, split: Split) -> Iterator[str]:
        """Texts of the documents in `split`, in corpus order."""
        return self._read([i for i, s in enumerate(self.splits) if s == split])

    def count(self, split: Split) -> int:
        return sum(s == split for s in self.splits)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "digest": self.digest,
            "documents": len(self.keys),
            "train_documents": self.count("train"),
            "val_documents": self.count("val"),
            **self.info,
        }


def text_corpus(
    source: str, val_frac: float, *, text_field: str = "text", hf_split: str = "train"
) -> Corpus:
    """A corpus of text documents (`open_corpus` takes every source, synthetic ones too).

    Args:
        source: "python-stdlib" (the running interpreter's standard library, .py files only, no
            site-packages); a directory (every non-hidden text file below it); a glob such as
            "docs/**/*.md"; a single file; or "hf:NAME" for a `datasets` dataset by hub name or
            local path (a folder saved with `save_to_disk`, or one `load_dataset` reads).
        val_frac: expected fraction of documents in the validation split (`assign_splits`).
        text_field: column holding the text (datasets only).
        hf_split: which split of the dataset to read (datasets only).
    """
    if source == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _walk(root, suffix=".py")
        info = {
            "kind": "python-stdlib",
            "python": sys.version.split()[0],
            "root": root.name,
        }
        return _file_corpus(source, root, files, val_frac, info)
    if source.startswith(HF_PREFIX):
        return _hf_corpus(source, val_frac, text_field, hf_split)
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"data.source={source!r}: the glob matched no files")
        root = Path(os.path.commonpath([p.parent.resolve() for p in files]))
        files = [p.resolve() for p in files]
        return _file_corpus(source, root, files, val_frac, {"kind": "glob"})
    path = Path(source)
    if path.is_dir():
        return _file_corpus(
            source, path.resolve(), _walk(path.resolve()), val_frac, {"kind": "dir"}
        )
    if path.is_file():
        return _file_corpus(
            source, path.resolve().parent, [path.resolve()], val_frac, {"kind": "file"}
        )
    raise CorpusError(
        f"data.source={source!r}: no such file or directory (expected {STDLIB!r}, a directory, "
        f"a glob, a file, {HF_PREFIX}NAME for a datasets dataset, or process:NAME)"
    )


def _walk(root: Path, suffix: str | None = None) -> list[Path]:
    """Regular files under `root` in sorted relative-path order, skipping hidden entries,
    caches and installed third-party packages."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in filenames:
            if name.startswith(".") or (suffix and not name.endswith(suffix)):
                continue
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _decode(data: bytes) -> str:
    # A few stdlib files are deliberately not UTF-8 (encoding tests); keep them, replaced.
    return data.decode("utf-8", errors="replace")


def _file_corpus(
    source: str, root: Path, files: list[Path], val_frac: float, info: dict[str, Any]
) -> Corpus:
    keys, blobs, skipped = [], [], 0
    digest = hashlib.sha256(f"files\0{val_frac!r}\0".encode())
    for p in files:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise CorpusError(f"data.source={source!r}: cannot read {p}: {e.strerror}") from None
        if b"\0" in data[:8192]:  # binary file: not text, not a document
            skipped += 1
            continue
        if not data.strip():
            continue
        key = p.relative_to(root).as_posix()
        keys.append(key)
        blobs.append(p)
        digest.update(key.encode() + b"\0" + hashlib.sha256(data).digest())
    if not keys:
        what = "holds no non-empty text file" if files else "holds no file"
        raise CorpusError(f"data.source={source!r}: {what}")
    splits = assign_splits(source, keys, val_frac)
    digest.update("".join(s[0] for s in splits).encode())
    info = {**info, "bytes": sum(p.stat().st_size for p in blobs), "binary_skipped": skipped}
    return Corpus(
        source=source,
        keys=tuple(keys),
        splits=splits,
        digest=digest.hexdigest(),
        info=info,
        _read=lambda positions: (_decode(blobs[i].read_bytes()) for i in positions),
    )


def assign_splits(source: str, keys: list[str], val_frac: float) -> tuple[Split, ...]:
    """The split of each key (`split_of`). When no key falls below val_frac, the key with the
    smallest hash goes to validation, so any corpus of two or more documents has a validation
    split; a CorpusError (naming `source`) when that is impossible or nothing is left to train."""
    splits = [split_of(k, val_frac) for k in keys]
    if val_frac > 0 and "val" not in splits:
        if len(keys) < 2:
            raise CorpusError(
                f"data.source={source!r}: one document cannot be split into train and "
                "validation; add documents or set --data.val-frac 0"
            )
        # Deterministic fallback: the key whose hash is smallest (the first to enter 'val').
        first = min(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).digest())
        splits[first] = "val"
    if "train" not in splits:
        raise CorpusError(f"data.source={source!r}: every document fell into validation")
    return tuple(splits)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_corpus(source: str, val_frac: float, text_field: str, hf_split: str) -> Corpus:
    name = source[len(HF_PREFIX) :]
    if not name:
        raise CorpusError(f"data.source={source!r}: name a dataset after {HF_PREFIX!r}")
    import datasets  # heavy import (pyarrow, pandas): only for this source

    local = Path(name)
    try:
        if local.is_dir() and (
            (local / "dataset_info.json").exists() or (local / "state.json").exists()
        ):
            ds = datasets.load_from_disk(str(local))
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
            ds = datasets.load_dataset(name, split=hf_split)
    except CorpusError:
        raise
    except Exception as e:  # datasets raises many types; report one line naming the source
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"data.source={source!r}: cannot load the dataset: {msg}") from None
    if text_field not in ds.column_names:
        raise CorpusError(
            f"data.source={source!r}: no column {text_field!r} (columns {ds.column_names}); "
            "choose one with --data.text-field"
        )
    if len(ds) == 0:
        raise CorpusError(f"data.source={source!r}: the dataset is empty")
    keys = [f"{hf_split}/{i}" for i in range(len(ds))]
    splits = assign_splits(source, keys, val_frac)
    # datasets fingerprints a dataset by its content and history; stable across processes.
    digest = hashlib.sha256(
        f"hf\0{name}\0{hf_split}\0{text_field}\0{ds._fingerprint}\0{val_frac!r}".encode()
    ).hexdigest()
    column = ds.select_columns([text_field])

    def read(positions: list[int]) -> Iterator[str]:
        for batch in column.select(positions).iter(batch_size=1024):
            for text in batch[text_field]:
                yield text if isinstance(text, str) else ""

    return Corpus(
        source=source,
        keys=tuple(keys),
        splits=splits,
        digest=digest,
        info={"kind": "datasets", "rows": len(ds), "split": hf_split, "field": text_field},
        _read=read,
    )
