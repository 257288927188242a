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

from typing import Any

import torch
from torch import Tensor, nn

from sparse_tf.extras import require
from sparse_tf.gpt2_config import GPT2Config


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
