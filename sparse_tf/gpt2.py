"""A dense Hugging Face GPT-2 that the trainer can train: the dense side of bridges.

No GPT-2 weights can be downloaded here, so the dense model a sparse one is bridged to is
trained locally by the ordinary trainer: a `GPT2Config` builds a `DenseGPT2` (a
`GPT2LMHeadModel` behind the trainable-model interface, `sparse_tf.trainable`), e.g.
`sparse-tf train --preset gpt2-tiny-cpu`. Its export is a Hugging Face folder
(`sparse_tf.checkpoint.export_model`), which `sparse_tf.bridges.load_gpt2` reads like any real
GPT-2 saved with `save_pretrained`.

It is its own model, not a mode of `GPTConfig`: GPT-2 has LayerNorm, learned positions and
no AbsTopK, bigram table or attention sinks, so none of those fields exist here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from sparse_tf.config import ARCH_KEY, Config, ConfigError, check
from sparse_tf.extras import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config(Config):
    """Architecture of a dense Hugging Face GPT-2 (LayerNorm, learned positions, GELU MLP,
    biases, untied embeddings, no dropout)."""

    ARCH: ClassVar[str] = "hf_gpt2"
    # Fields a GPT-2 config was saved with while it was a mode of GPTConfig (arch="hf_gpt2"),
    # each at the only value that mode allowed: read and dropped, so old run folders load.
    _LEGACY: ClassVar[dict[str, Any]] = {
        "afrac": None,
        "bigram": False,
        "attn_sink": False,
        "pos_emb": True,
        "bias": True,
    }

    vocab_size: int
    """Tokens in the vocabulary."""
    n_ctx: int
    """Longest sequence the model accepts (learned positions)."""
    n_layer: int
    """Transformer blocks."""
    d_model: int
    """Residual stream width; a multiple of d_head."""
    d_head: int = 16
    """Width of one attention head."""
    d_mlp: int | None = None
    """MLP hidden width; None means 4 · d_model (resolved on construction)."""
    init_std: float = 0.02
    """Std of the normal init of weights (GPT-2's initializer_range)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        for name in ("vocab_size", "n_ctx", "n_layer", "d_model", "d_head", "d_mlp"):
            check(getattr(self, name) >= 1, self, name, "must be >= 1")
        check(
            self.d_model % self.d_head == 0,
            self,
            "d_model",
            f"must be a multiple of d_head={self.d_head}",
        )
        check(self.init_std > 0, self, "init_std", "must be > 0")

    @property
    def n_head(self) -> int:
        return self.d_model // self.d_head

    def to_dict(self) -> dict[str, Any]:
        """The fields plus `"arch": "hf_gpt2"`, which tells a saved GPT-2 config from a
        sparse model's (`sparse_tf.trainable.model_config`)."""
        return {ARCH_KEY: self.ARCH, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """Build from a saved config; it must say `"arch": "hf_gpt2"`. Configs saved before
        GPT-2 was its own model also carry the sparse model's fields at the values GPT-2
        implies; those are dropped (any other value is refused, naming the field)."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict) or data.get(ARCH_KEY) != cls.ARCH:
            raise ConfigError(f'{where}not a GPT2Config (no "{ARCH_KEY}": "{cls.ARCH}")')
        data = {k: v for k, v in data.items() if k != ARCH_KEY}
        for name, value in cls._LEGACY.items():
            if name in data:
                if data[name] != value and not (name == "afrac" and data[name] == 0):
                    raise ConfigError(
                        f"{where}GPT2Config: {name}={data.pop(name)!r}, but GPT-2 has "
                        f"{name}={value!r}"
                    )
                del data[name]
        return super().from_dict(data, source)


def require_transformers() -> None:
    """transformers, imported (a heavy import: only when used), or the one-line error saying
    that the dense GPT-2 needs the [hf] extra."""
    require("transformers", "hf", "the dense GPT-2 (sparse_tf.gpt2)")


def hf_config(cfg: GPT2Config, eot_id: int) -> Any:
    """The `transformers.GPT2Config` of `cfg`: same depth, width, heads, context and
    vocabulary; untied embeddings and no dropout (as the sparse models); SDPA attention."""
    require_transformers()
    from transformers import GPT2Config as HFConfig

    config = HFConfig(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    config._attn_implementation = "sdpa"
    return config


class DenseGPT2(nn.Module):
    """A `GPT2LMHeadModel` (`.hf`) with the trainable-model interface: `forward(tokens[,
    positions]) -> logits`, `cfg`, and no sparse matrices. Initialisation draws from torch's
    global RNG; `eot_id` is the tokenizer's end-of-text id (GPT-2's bos and eos)."""

    def __init__(self, cfg: GPT2Config, eot_id: int = 0) -> None:
        config = hf_config(cfg, eot_id)  # imports transformers, or says which extra it needs
        from transformers import GPT2LMHeadModel

        super().__init__()
        self.cfg = cfg
        self.hf = GPT2LMHeadModel(config)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        logits = self.hf(input_ids=tokens).logits  # [B, T, vocab]
        if positions is not None:
            logits = logits[torch.arange(len(tokens), device=tokens.device), positions]
        return logits

    def sparse_weights(self) -> list[Any]:
        return []  # dense: nothing is projected

    def grad_rms_groups(self) -> list[str]:
        return [""]  # one gradient RMS over the whole model
