"""Training data: corpora, tokenizers, packed token windows."""

from sparse_tf.data.corpus import STDLIB, Corpus, CorpusError
from sparse_tf.data.pipeline import Data, DataConfig, prepare_data
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
