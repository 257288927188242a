"""Packed token streams: a corpus split tokenised once into memory-mapped shards, cut into
training windows, and visited in a seeded order that a single integer resumes.

Packing: every document's tokens followed by `<|endoftext|>`, concatenated in corpus order, no
document dropped or truncated. A window is n_ctx + 1 consecutive tokens (inputs = the first
n_ctx, targets = the last n_ctx) and consecutive windows overlap by one token, so every
next-token pair of the stream is trained on exactly once per epoch; the last, shorter window is
padded (inputs with `<|endoftext|>`, targets with -100, which the loss ignores).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.data.corpus import Corpus, Split
from sparse_tf.data.encode import write_store
from sparse_tf.data.tokenizer import tokenizer_digest
from sparse_tf.errors import SparseTFError
from sparse_tf.io import ProgressMode, read_json

IGNORE = -100
"""Target value the loss skips (padding of the last window)."""
SHARD_TOKENS = 1 << 26
"""Tokens per shard file (128 MiB as uint16)."""
_ENCODING = "pieces-v1"
"""Bump when how texts become tokens changes (here: long texts encoded in pieces), so that
token caches of an earlier way are not reused."""


class TokenDataError(SparseTFError):
    """A token shard is missing, corrupt or holds ids the model cannot embed."""


@dataclass(frozen=True)
class TokenShards:
    """One split's token stream, memory-mapped from .npy shards, addressed as one array."""

    files: tuple[Path, ...]
    arrays: tuple[np.ndarray, ...]
    starts: np.ndarray  # [n_shards + 1] int64: global offset of each shard, then the total
    max_ids: tuple[int | None, ...] = ()
    """Each shard's largest token id as its writer recorded it (None: not recorded, so
    `check_vocab` reads the shard): a store of billions of tokens is checked from its metadata
    instead of by reading every token at every start."""
    documents: int | None = None
    """The documents packed into this stream, as the store recorded them (None: not recorded,
    as in pre-tokenised data and older stores)."""

    @classmethod
    def open(
        cls,
        files: Iterable[Path],
        expected: Iterable[int],
        max_ids: Iterable[int | None] | None = None,
        documents: int | None = None,
    ) -> TokenShards:
        files, arrays = tuple(files), []
        for f, n in zip(files, expected, strict=True):
            try:
                a = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise TokenDataError(f"{f}: unreadable token shard ({e})") from None
            if a.ndim != 1 or a.shape[0] != n:
                raise TokenDataError(
                    f"{f}: holds {a.shape} tokens, its metadata says {n} (corrupt cache; delete "
                    "the folder to rebuild it)"
                )
            arrays.append(a)
        return cls.of(files, arrays, max_ids, documents)

    @classmethod
    def of(
        cls,
        files: Iterable[Path],
        arrays: Iterable[np.ndarray],
        max_ids: Iterable[int | None] | None = None,
        documents: int | None = None,
    ) -> TokenShards:
        """The stream of these 1-D arrays (memory maps of `files`), in order."""
        arrays = tuple(arrays)
        starts = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=starts[1:])
        ids = tuple(max_ids) if max_ids is not None else (None,) * len(arrays)
        return cls(tuple(files), arrays, starts, ids, documents)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, across shard boundaries."""
        stop = min(stop, len(self))
        parts = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            a, base = self.arrays[shard], int(self.starts[shard])
            take = min(stop, base + len(a)) - start
            parts.append(a[start - base : start - base + take])
            start += take
            shard += 1
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` (any shape; each in [0, len)) as int64, in one gather per
        shard that they touch."""
        if len(self.arrays) == 1:
            return self.arrays[0][positions].astype(np.int64)
        out = np.empty(positions.shape, np.int64)
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        for k in np.unique(shard):
            here = shard == k
            out[here] = self.arrays[k][positions[here] - self.starts[k]]
        return out

    def check_vocab(self, vocab_size: int) -> None:
        """Raise naming the shard and the id if any token id is ≥ vocab_size."""
        for f, a, recorded in zip(self.files, self.arrays, self.max_ids, strict=True):
            top = recorded if recorded is not None else int(a.max()) if len(a) else -1
            if top >= vocab_size:
                raise TokenDataError(
                    f"{f}: token id {top} >= the model's vocab_size {vocab_size}; the model is "
                    "too small for this tokenizer (raise --model.vocab-size)"
                )


class NotPreparedError(TokenDataError):
    """The token store (or tokenizer) a run needs is not in the cache and may not be built
    here (a process of a torchrun group); the message says which command builds it."""


def store_folder(corpus: Corpus, tok: Tokenizer, cache: Path, shard_tokens: int) -> Path:
    """Where the token store of `corpus` under `tok` lives: named by a digest of both."""
    recipe = f"{corpus.digest}\0{tokenizer_digest(tok)}\0{shard_tokens}\0{_ENCODING}"
    return cache / "tokens" / hashlib.sha256(recipe.encode()).hexdigest()[:32]


def pack_corpus(
    corpus: Corpus,
    tok: Tokenizer,
    cache: Path,
    shard_tokens: int = SHARD_TOKENS,
    *,
    build: bool = True,
    workers: int | None = None,
    progress: ProgressMode = "none",
) -> dict[Split, TokenShards]:
    """Both splits of `corpus` as token shards under `cache`, tokenised now if missing (with
    `workers` processes, see `sparse_tf.data.encode`) unless `build` is off."""
    folder = store_folder(corpus, tok, cache, shard_tokens)
    if not (folder / "meta.json").is_file():
        if not build:
            raise NotPreparedError(f"{folder}: no token store")
        write_store(corpus, tok, folder, shard_tokens, workers=workers, progress=progress)
    return open_store(folder)


def open_store(folder: Path) -> dict[Split, TokenShards]:
    """The splits of the token store in `folder`, memory-mapped."""
    try:
        meta = read_json(folder / "meta.json")
        return {
            split: TokenShards.open(
                (folder / s["file"] for s in meta["splits"][split]),
                (s["tokens"] for s in meta["splits"][split]),
                (s.get("max_id") for s in meta["splits"][split]),  # absent in older stores
                meta.get("documents", {}).get(split),  # likewise
            )
            for split in ("train", "val")
        }
    except (KeyError, TypeError, ValueError) as e:
        raise TokenDataError(f"{folder}: corrupt token cache ({e}); delete it to rebuild") from None


class Windows:
    """A token stream cut into n_ctx-token training windows (see the module docstring)."""

    def __init__(self, tokens: TokenShards, n_ctx: int, pad_id: int) -> None:
        self.tokens, self.n_ctx, self.pad_id = tokens, n_ctx, pad_id
        self.n_windows = max(0, math.ceil((len(tokens) - 1) / n_ctx))

    def __len__(self) -> int:
        return self.n_windows

    def get(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """(inputs, targets), both int64 [len(indices), n_ctx], for the given window indices.

        One gather for the whole batch (a Python loop over 512 windows cost ~6 ms per step at
        the paper's batch: 2% of an H100's step)."""
        T, total = self.n_ctx, len(self.tokens)
        starts = np.asarray(indices, dtype=np.int64) * T
        pos = starts[:, None] + np.arange(T + 1)  # [B, T + 1]: a window and its next token
        tokens = self.tokens.take(np.minimum(pos, max(total - 1, 0)))  # [B, T + 1]
        # Column j is a training pair while its target, token j + 1, is inside the stream; the
        # last window's tail is padding (inputs) and ignored (targets).
        pair = pos[:, 1:] < total  # [B, T]
        inputs = np.where(pair, tokens[:, :-1], self.pad_id)
        targets = np.where(pair, tokens[:, 1:], IGNORE)
        return torch.from_numpy(inputs), torch.from_numpy(targets)


class EpochSampler:
    """Window indices in a fresh seeded permutation every epoch, addressed by a global sample
    position: samples [p, p + n) are the same whatever happened before, so a run resumes
    exactly from the position alone, and ranks can read disjoint slices of one global batch."""

    def __init__(self, n_windows: int, seed: int) -> None:
        if n_windows < 1:
            raise ValueError("EpochSampler needs at least one window")
        self.n_windows, self.seed = n_windows, seed
        self._epoch, self._perm = -1, np.zeros(0, np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.n_windows)
        return self._perm

    def indices(self, position: int, count: int) -> np.ndarray:
        """Window indices of global samples position, position + 1, ..., position + count - 1."""
        out = np.empty(count, dtype=np.int64)
        for j in range(count):
            epoch, offset = divmod(position + j, self.n_windows)
            out[j] = self.permutation(epoch)[offset]
        return out


def eval_indices(n_windows: int, limit: int | None) -> np.ndarray:
    """Fixed validation windows: all of them, or `limit` spread evenly over the stream."""
    if limit is None or limit >= n_windows:
        return np.arange(n_windows, dtype=np.int64)
    return np.unique(np.linspace(0, n_windows - 1, limit).round().astype(np.int64))
