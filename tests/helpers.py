"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from sparse_tf import GPT, GPTConfig


def tiny_config(**overrides: object) -> GPTConfig:
    """A 2-layer, d_model 64 model: 4 heads of 16, d_mlp 256, AbsTopK k = 16 / 64."""
    fields: dict[str, object] = {"vocab_size": 96, "n_ctx": 24, "n_layer": 2, "d_model": 64}
    fields.update(overrides)
    return GPTConfig(**fields)  # type: ignore[arg-type]


def tiny_model(**overrides: object) -> GPT:
    return GPT(tiny_config(**overrides))


def tokens(cfg: GPTConfig, batch: int = 3, seq: int | None = None) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq or cfg.n_ctx))
