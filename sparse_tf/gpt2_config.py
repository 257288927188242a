"""The dense GPT-2's architecture config (`GPT2Config`), without torch: the `--help` of the
training commands builds its parser from it (`sparse_tf.gpt2` re-exports it)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from sparse_tf.config import ARCH_KEY, Config, ConfigError, check


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
