"""What a model must provide to be trained, checkpointed, projected and exported.

The optimizer (`sparse_tf.optim`), the checkpoints (`sparse_tf.checkpoint`) and the trainer
(`sparse_tf.training`) take any `TrainableModel`; nothing in them asks which class it is. Three
implement it: the weight-sparse `GPT` (`sparse_tf.model`), the dense Hugging Face `DenseGPT2`
(`sparse_tf.gpt2`), and the bridged pair of `sparse-tf bridge` (`sparse_tf.bridges.model`).

A model config says which model it builds: `build_model(cfg)`. Saved configs name their
model under `"arch"` (`model_config` reads either kind).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer
from torch import Tensor, nn

from sparse_tf.config import tagged_config
from sparse_tf.gpt2 import DenseGPT2, GPT2Config
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.model_config import ModelConfig
from sparse_tf.sparsity import SparseWeight


class TrainableModel(Protocol):
    """An `nn.Module` the training stack can drive. Beyond the module methods listed here:

    - `cfg`: its config (checkpoints record it; `cfg.n_ctx`, `cfg.vocab_size` size the data);
    - `model(tokens [B, T]) -> logits [B, T, vocab]`, and with `positions` [B] only the logits
      there [B, vocab] (validation and task evaluation);
    - `sparse_weights()`: the matrices the optimizer projects to the scheduled L0 (named as in
      `named_parameters`); [] for a dense model;
    - `grad_rms_groups()`: parameter-name prefixes whose gradients the optimizer normalises to
      RMS 1 separately (`[""]`: the whole model at once); every parameter in exactly one.
    """

    cfg: Any

    def __call__(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor: ...

    def sparse_weights(self) -> list[SparseWeight]: ...

    def grad_rms_groups(self) -> list[str]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


class SelfExporting(TrainableModel, Protocol):
    """A model that writes its own export folder (`sparse_tf.checkpoint.export_model` writes
    GPT and DenseGPT2 folders itself; a plug-in model such as the bridged pair adds files)."""

    def export(
        self, path: Path, tokenizer: Tokenizer, config: dict[str, Any] | None
    ) -> dict[str, int]:
        """Write the folder atomically; return the size of each weights file."""
        ...


def build_model(cfg: ModelConfig, eot_id: int = 0) -> GPT | DenseGPT2:
    """The model `cfg` describes (`eot_id`: the tokenizer's end-of-text id, which GPT-2
    records as its bos/eos). Initialisation draws from torch's global RNG."""
    if isinstance(cfg, GPT2Config):
        return DenseGPT2(cfg, eot_id)
    return GPT(cfg)


def model_config(data: dict[str, Any], source: str | None = None) -> ModelConfig:
    """A saved model config as the config of the model it names (`"arch"`: "sparse_tf" or
    absent for `GPTConfig`, "hf_gpt2" for `GPT2Config`)."""
    return tagged_config((GPTConfig, GPT2Config), data, source)
