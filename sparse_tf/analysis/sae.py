"""Sparse autoencoders on a site's activations, and how well one transfers to another model.

A ReLU SAE with a pre-encoder bias and unit-norm decoder columns (the rotation paper's):

    f = ReLU((x̃ − b_pre) W_encᵀ + b_enc),   x̃̂ = f W_decᵀ + b_pre,   loss = ‖x̃̂ − x̃‖² / d + λ‖f‖₁

on inputs rescaled once by a scalar (x̃ = x / s, s² the mean per-entry variance of the training
activations) so that λ means the same at every site and in every model. Decoder columns are
kept at unit norm: the gradient's component along each column is removed before the step and
the columns are renormalised after it (otherwise the L1 term shrinks f by growing W_dec).

    sae = train_sae(acts_model_b, SAEConfig(expansion=8))
    sae_explained_variance(sae, acts_model_b_test)          # self
    sae_explained_variance(sae, acts_model_a_test @ R + c)   # the rotated other model
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from sparse_tf.analysis.linalg import _as2d, explained_variance


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    expansion: int = 8
    """Latents per input dimension."""
    l1: float = 1e-2
    """λ of the L1 penalty (on inputs scaled to unit per-entry variance)."""
    steps: int = 3000
    batch: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("expansion", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SAEConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.l1 < 0 or self.lr <= 0:
            raise ValueError(f"SAEConfig: l1={self.l1} must be >= 0 and lr={self.lr} > 0")


class SAE(nn.Module):
    """The autoencoder; `forward(x [n, d]) -> x̂ [n, d]` in the input's own scale."""

    def __init__(self, d: int, latents: int, scale: float) -> None:
        super().__init__()
        self.w_enc = nn.Parameter(torch.empty(latents, d))
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.w_dec = nn.Parameter(torch.empty(d, latents))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def encode(self, x: Tensor) -> Tensor:
        """Latents [n, latents] of inputs x [n, d]."""
        return torch.relu((x / self.scale - self.b_pre) @ self.w_enc.T + self.b_enc)

    def decode_scaled(self, f: Tensor) -> Tensor:
        return f @ self.w_dec.T + self.b_pre

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_scaled(self.encode(x)) * self.scale

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)


def train_sae(acts: ArrayLike, cfg: SAEConfig = SAEConfig(), device: str = "cpu") -> SAE:
    """An SAE fitted to activations [n, d] (minibatches drawn with replacement, seeded)."""
    x_np = _as2d(acts, "acts")
    n, d = x_np.shape
    scale = float(np.sqrt(np.square(x_np - x_np.mean(0)).mean()))
    if scale == 0.0:
        raise ValueError("train_sae: the activations are constant")
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = SAE(d, cfg.expansion * d, scale)
    with torch.no_grad():
        w = torch.randn(d, cfg.expansion * d, generator=gen)
        sae.w_dec.copy_(w / w.norm(dim=0, keepdim=True))
        sae.w_enc.copy_(sae.w_dec.T)  # tied at init: each latent starts reading its direction
        sae.b_pre.copy_(torch.as_tensor(x_np.mean(0) / scale))
    sae.to(device)
    x = torch.as_tensor(x_np, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        rows = torch.randint(0, n, (min(cfg.batch, n),), generator=gen).to(device)
        batch = x[rows]  # [b, d]
        f = sae.encode(batch)  # [b, latents]
        loss = (sae.decode_scaled(f) - batch / sae.scale).square().sum(1).mean() / d
        loss = loss + cfg.l1 * f.abs().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep the step tangent to the unit-norm columns
            g, wd = sae.w_dec.grad, sae.w_dec
            g -= wd * (g * wd).sum(0, keepdim=True)
        opt.step()
        sae.normalise_decoder()
    return sae.eval().cpu()


@torch.no_grad()
def sae_explained_variance(sae: SAE, acts: ArrayLike) -> float:
    """Share of the variance of activations [n, d] (each dimension around its own mean) that
    the SAE's reconstruction explains."""
    x = _as2d(acts, "acts")
    recon = sae(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    return explained_variance(recon, x)


@torch.no_grad()
def sae_density(sae: SAE, acts: ArrayLike) -> float:
    """Mean number of active latents per input (L0 of the code)."""
    f = sae.encode(torch.as_tensor(_as2d(acts, "acts"), dtype=torch.float32))
    return float((f > 0).sum(1).float().mean())
