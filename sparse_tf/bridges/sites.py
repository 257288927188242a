"""Two transformers seen the same way: a stack of residual-stream sites one can read and resume.

A model with L blocks has 2L + 1 sites (`sparse_tf.sites.residual_sites`): the residual stream
entering each block's attention (site 2i, after the embeddings for i = 0), entering each
block's MLP (site 2i + 1), and leaving the last block (site 2L, before the final norm). An
adapter gives

    sites(tokens)            -> [site 0, ..., site 2L], each [B, T, d_model]
    run_from(s, x, tokens)   -> logits [B, T, vocab] of the model resumed at site s with x there

so that `run_from(s, sites(tokens)[s], tokens)` is the model's own output for every s (tested).
`SparseSites` adapts `sparse_tf.GPT` (its hooks fire as in a plain forward), `GPT2Sites` a
Hugging Face `GPT2LMHeadModel`, rebuilt block by block from its own modules.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from sparse_tf.model import GPT
from sparse_tf.sites import residual_sites


class ResidualSites(Protocol):
    """A causal LM as 2L + 1 residual-stream sites (see the module docstring)."""

    n_layer: int
    d_model: int

    @property
    def n_sites(self) -> int: ...

    def sites(self, tokens: Tensor) -> list[Tensor]: ...

    def run_from(self, site: int, x: Tensor, tokens: Tensor) -> Tensor: ...


def site_name(site: int, n_layer: int) -> str:
    """'L{i}.attn_in', 'L{i}.mlp_in' or 'final' for a site index (`sparse_tf.sites`)."""
    if not 0 <= site <= 2 * n_layer:
        raise ValueError(f"site {site} is not in [0, {2 * n_layer}] (2 x {n_layer} layers + 1)")
    return residual_sites(n_layer)[site][0]


class _Sites:
    """Shared walking logic: subclasses give the embedding, the two halves of block i and
    the readout."""

    n_layer: int
    d_model: int

    @property
    def n_sites(self) -> int:
        return 2 * self.n_layer + 1

    def sites(self, tokens: Tensor) -> list[Tensor]:
        x = self._embed(tokens)
        out = [x]
        for i in range(self.n_layer):
            x = self._attn_half(i, x)
            out.append(x)
            x = self._mlp_half(i, x)
            out.append(x)
        return out

    def run_from(self, site: int, x: Tensor, tokens: Tensor) -> Tensor:
        site_name(site, self.n_layer)  # range check
        layer, half = divmod(site, 2)
        if half:
            x = self._mlp_half(layer, x)
            layer += 1
        for i in range(layer, self.n_layer):
            x = self._mlp_half(i, self._attn_half(i, x))
        return self._readout(x, tokens)

    def _embed(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def _attn_half(self, i: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _mlp_half(self, i: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _readout(self, x: Tensor, tokens: Tensor) -> Tensor:
        raise NotImplementedError


class SparseSites(_Sites):
    """`sparse_tf.GPT` as residual sites; its hook points fire as in `GPT.forward`."""

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.n_layer, self.d_model = model.cfg.n_layer, model.cfg.d_model

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.model.embed_tokens(tokens)

    def _attn_half(self, i: int, x: Tensor) -> Tensor:
        block = self.model.blocks[i]
        return block.attn_half(block.hook_resid_pre(x))

    def _mlp_half(self, i: int, x: Tensor) -> Tensor:
        return self.model.blocks[i].mlp_half(x)

    def _readout(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self.model.logits_from_residual(x, tokens)


class GPT2Sites(_Sites):
    """A Hugging Face `GPT2LMHeadModel` as residual sites.

    Each block is run from its own modules (ln_1, attn, ln_2, mlp) exactly as
    `GPT2Block.forward` composes them, with an explicit causal mask, so the model must use
    PyTorch's SDPA attention (`load_gpt2` sets it). Dropout follows the model's train/eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != "sdpa":
            raise ValueError(
                f"GPT2Sites needs attn_implementation='sdpa' (the model uses {impl!r}); "
                "load it with sparse_tf.bridges.load_gpt2"
            )
        self.model = model
        self.n_layer, self.d_model = model.config.n_layer, model.config.n_embd

    def _embed(self, tokens: Tensor) -> Tensor:
        t = self.model.transformer
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return t.drop(t.wte(tokens) + t.wpe(positions)[None])

    def _attn_half(self, i: int, x: Tensor) -> Tensor:
        block = self.model.transformer.h[i]
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
        attn, _ = block.attn(block.ln_1(x), attention_mask=causal)
        return x + attn

    def _mlp_half(self, i: int, x: Tensor) -> Tensor:
        block = self.model.transformer.h[i]
        return x + block.mlp(block.ln_2(x))

    def _readout(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self.model.lm_head(self.model.transformer.ln_f(x))
