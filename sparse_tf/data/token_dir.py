"""Pre-tokenised corpora: `--data.source tokens:DIR`, token files written by another tool.

Layout (nanoGPT's `train.bin` / `val.bin` is one instance):

    DIR/train*.npy | DIR/train*.bin   the training stream: the files in sorted name order
    DIR/val*.npy   | DIR/val*.bin     the validation stream (needed unless --data.val-frac 0)
    DIR/tokenizer.json                the tokenizer the ids come from (`tokenizers` format);
                                      without it, `--data.tokenizer gpt2` (GPT-2's BPE)
    DIR/tokens.json                   optional: {"dtype": "uint32"} for .bin files (default
                                      uint16)

`.npy` files are 1-D uint16 or uint32 arrays; `.bin` files raw little-endian ids. Documents are
separated by the tokenizer's `<|endoftext|>` inside the stream, as in packed shards. Nothing is
copied: the files are memory-mapped where they are, and every id is checked against the model's
vocabulary before training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparse_tf.data.corpus import Corpus, CorpusError, Split
from sparse_tf.io import read_json

TOKENS_PREFIX = "tokens:"
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_SAMPLE = 1 << 20
"""Bytes hashed at each end of a file for the digest (hashing terabytes at every start would
take minutes): with names and sizes, enough to tell two exports apart."""


def token_files(source: str, val_frac: float) -> tuple[Path, dict[Split, list[Path]], Any]:
    """The folder, its token files per split, and the dtype of its .bin files; a CorpusError
    naming the source or file at fault."""
    folder = Path(source.removeprefix(TOKENS_PREFIX))
    if not folder.is_dir():
        raise CorpusError(f"data.source={source!r}: {folder} is not a directory")
    dtype: Any = np.uint16
    if (folder / "tokens.json").is_file():
        try:
            name = read_json(folder / "tokens.json").get("dtype", "uint16")
        except (ValueError, AttributeError) as e:
            raise CorpusError(f"{folder / 'tokens.json'}: {e}") from None
        if name not in _DTYPES:
            raise CorpusError(f"{folder / 'tokens.json'}: dtype {name!r} is not uint16 or uint32")
        dtype = _DTYPES[name]
    files: dict[Split, list[Path]] = {
        split: sorted(
            p for p in folder.iterdir() if p.name.startswith(split) and p.suffix in (".npy", ".bin")
        )
        for split in ("train", "val")
    }
    if not files["train"]:
        raise CorpusError(f"data.source={source!r}: no train*.npy or train*.bin in {folder}")
    if val_frac and not files["val"]:
        raise CorpusError(
            f"data.source={source!r}: no val*.npy or val*.bin in {folder}; add one or set "
            "--data.val-frac 0"
        )
    return folder, files, dtype


def map_tokens(path: Path, bin_dtype: Any) -> np.ndarray:
    """A token file, memory-mapped: a 1-D uint16/uint32 .npy, or raw ids in a .bin."""
    try:
        if path.suffix == ".bin":
            if path.stat().st_size % np.dtype(bin_dtype).itemsize:
                raise CorpusError(
                    f"{path}: {path.stat().st_size} bytes is not a whole number of "
                    f"{np.dtype(bin_dtype).name} ids"
                )
            if path.stat().st_size == 0:
                return np.zeros(0, bin_dtype)
            return np.memmap(path, dtype=bin_dtype, mode="r")
        a = np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: unreadable token file ({e})") from None
    if a.ndim != 1 or a.dtype not in (np.uint16, np.uint32):
        raise CorpusError(
            f"{path}: holds {a.dtype} {a.shape}; expected a 1-D uint16 or uint32 array"
        )
    return a


def token_corpus(source: str, val_frac: float) -> Corpus:
    """The token files of `tokens:DIR` as a Corpus (keys: file names, split by name), whose
    digest covers every file's name, size and first and last MiB."""
    folder, files, _ = token_files(source, val_frac)
    digest = hashlib.sha256(f"tokens\0{val_frac!r}\0".encode())
    entries: list[tuple[str, Split]] = []  # one per file: few
    for split in ("train", "val"):
        for p in files[split] if split == "train" or val_frac else []:
            size = p.stat().st_size
            with open(p, "rb") as f:
                head = f.read(_SAMPLE)
                f.seek(max(0, size - _SAMPLE))
                tail = f.read(_SAMPLE)
            digest.update(f"{p.name}\0{size}\0".encode() + head + tail)
            entries.append((p.name, split))

    def read(split: Split) -> Iterator[str]:
        raise CorpusError(f"data.source={source!r}: holds token ids, not text to train on")

    return Corpus(
        source=source,
        digest=digest.hexdigest(),
        info={
            "kind": "tokens",
            "root": folder.name,
            "bytes": sum(p.stat().st_size for group in files.values() for p in group),
        },
        size=len(entries),
        counts={
            "train": sum(split == "train" for _, split in entries),
            "val": sum(split == "val" for _, split in entries),
        },
        _entries=lambda: iter(entries),
        _documents=read,
    )
