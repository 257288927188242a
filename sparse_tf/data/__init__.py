"""Training data: corpora, tokenizers, packed token windows."""

from typing import TYPE_CHECKING

from sparse_tf.lazy import lazy_exports

_LAZY: dict[str, str] = {
    "STDLIB": "sparse_tf.data.corpus",
    "Corpus": "sparse_tf.data.corpus",
    "CorpusError": "sparse_tf.data.corpus",
    "Data": "sparse_tf.data.pipeline",
    "DataConfig": "sparse_tf.data.config",
    "prepare_data": "sparse_tf.data.pipeline",
    "open_corpus": "sparse_tf.data.sources",
    "EOT": "sparse_tf.data.tokenizer",
    "TokenizerError": "sparse_tf.data.tokenizer",
    "gpt2_bpe": "sparse_tf.data.tokenizer",
    "load_tokenizer": "sparse_tf.data.tokenizer",
    "save_tokenizer": "sparse_tf.data.tokenizer",
    "train_bpe": "sparse_tf.data.tokenizer",
    "IGNORE": "sparse_tf.data.tokens",
    "EpochSampler": "sparse_tf.data.tokens",
    "TokenDataError": "sparse_tf.data.tokens",
    "TokenShards": "sparse_tf.data.tokens",
    "Windows": "sparse_tf.data.tokens",
}
"""What this package exports, and the module of each: imported on first use, so that its
torch-free modules (the configs that `--help` reads) import no torch."""

if TYPE_CHECKING:
    from sparse_tf.data.config import DataConfig
    from sparse_tf.data.corpus import STDLIB, Corpus, CorpusError
    from sparse_tf.data.pipeline import Data, prepare_data
    from sparse_tf.data.sources import open_corpus
    from sparse_tf.data.tokenizer import (
        EOT,
        TokenizerError,
        gpt2_bpe,
        load_tokenizer,
        save_tokenizer,
        train_bpe,
    )
    from sparse_tf.data.tokens import IGNORE, EpochSampler, TokenDataError, TokenShards, Windows


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "EOT",
    "IGNORE",
    "STDLIB",
    "Corpus",
    "CorpusError",
    "Data",
    "DataConfig",
    "EpochSampler",
    "TokenDataError",
    "TokenShards",
    "TokenizerError",
    "Windows",
    "gpt2_bpe",
    "load_tokenizer",
    "open_corpus",
    "prepare_data",
    "save_tokenizer",
    "train_bpe",
]
