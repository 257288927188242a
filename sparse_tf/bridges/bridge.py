"""Encoders and decoders between a dense model's residual stream and a sparse model's.

One pair per sparse-model site (`sites.py`): the encoder maps the dense residual at the paired
dense site into the sparse model's residual (Linear + AbsTopK), the decoder maps the sparse
residual back (Linear). When the depths differ, sparse site j is paired with dense site
j · L_dense / L_sparse rounded half up: the embeddings with the embeddings, the final residual
with the final residual, the sites in between spread evenly.

The losses (paper section 2.3) of one batch, for a frozen dense model and a trained sparse one:

- normalised MSE (fraction of variance unexplained) of every encoder (target: the sparse
  residual, detached: the encoders learn to imitate the sparse model, not the reverse) and
  decoder (target: the dense residual);
- hybrid KL d→s at site j: the dense model up to its paired site, encode, the sparse model from
  j to the logits; KL(dense output ‖ hybrid output);
- hybrid KL s→d at site j: the sparse model up to j, decode, the (frozen) dense model from its
  paired site on; KL(dense output ‖ hybrid output). Gradients flow through the dense model
  into the decoder and the sparse model, which is how the sparse model is pulled to be
  interchangeable with the dense one.

Each kind is averaged over the sites, so its coefficient does not grow with depth.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_tf.bridges.config import BridgeConfig  # torch-free: `bridge --help` reads it
from sparse_tf.bridges.sites import ResidualSites
from sparse_tf.sparsity import AbsTopK


def site_map(sparse_layers: int, dense_layers: int) -> list[int]:
    """Dense site paired with each sparse site 0 .. 2·sparse_layers (see module docstring)."""
    n_sparse, n_dense = 2 * sparse_layers, 2 * dense_layers
    # j · n_dense / n_sparse rounded half up, in integers.
    return [(2 * j * n_dense + n_sparse) // (2 * n_sparse) for j in range(n_sparse + 1)]


class Bridges(nn.Module):
    """Per sparse site j: `encoders[j]` dense→sparse, `decoders[j]` sparse→dense."""

    def __init__(
        self, d_dense: int, d_sparse: int, dense_sites: list[int], encoder_afrac: float | None
    ) -> None:
        super().__init__()
        self.d_dense, self.d_sparse = d_dense, d_sparse
        self.dense_sites = list(dense_sites)
        n = len(dense_sites)
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in range(n))
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in range(n))
        self.topk = AbsTopK(encoder_afrac)
        # Zero init (as LoRA's B): every bridge starts out predicting 0, so each NMSE starts
        # near 1 whatever the two residual streams' scales, and each hybrid starts as the
        # model resumed from an empty residual stream.
        for linear in [*self.encoders, *self.decoders]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def __len__(self) -> int:
        """Sites bridged: one per sparse-model site."""
        return len(self.dense_sites)

    @classmethod
    def between(cls, dense: ResidualSites, sparse: ResidualSites, cfg: BridgeConfig) -> Bridges:
        return cls(
            dense.d_model,
            sparse.d_model,
            site_map(sparse.n_layer, dense.n_layer),
            cfg.encoder_afrac,
        )

    def encode(self, site: int, h_dense: Tensor) -> Tensor:
        """Dense residual [..., d_dense] (at `dense_sites[site]`) -> sparse site `site`.
        fp32 like the residual streams it enters (under autocast the Linear gives bf16)."""
        return self.topk(self.encoders[site](h_dense)).float()

    def decode(self, site: int, h_sparse: Tensor) -> Tensor:
        """Sparse residual [..., d_sparse] at `site` -> the dense residual at its pair (fp32)."""
        return self.decoders[site](h_sparse).float()


def nmse(pred: Tensor, target: Tensor, spread: Tensor | None = None) -> Tensor:
    """Fraction of the target's variance left unexplained: the mean over tokens of
    Σ_features (pred − target)², divided by the target's spread, the mean over tokens of
    Σ_features (target − its mean)². By default the spread is this batch's; pass the spread of
    a larger batch (`target_spreads`) to make the result a share of that batch's fraction, so
    that micro-batches and ranks add up to exactly the whole batch's value. The spread is a
    constant (no gradient)."""
    target = target.float()
    error = (pred.float() - target).square().sum(-1).mean()
    if spread is None:
        flat = target.flatten(0, -2)  # [tokens, features]
        spread = (flat - flat.mean(0)).square().sum(-1).mean()
    return error / spread.detach().clamp_min(1e-12)


def target_moments(
    dense: ResidualSites, sparse: ResidualSites, bridges: Bridges, tokens: Tensor
) -> Tensor:
    """Sums over the tokens of one batch from which `target_spreads` computes the NMSE
    denominators of a larger batch: flat float64 [sites · (d_sparse + 1 + d_dense + 1) + 1]:
    per site Σ x and Σ |x|² of the encoder's target (the sparse residual) and of the
    decoder's (the dense residual at the paired site), then the token count. Sums of several
    batches (and ranks: an all-reduce) add up."""
    with torch.no_grad():
        h_dense, h_sparse = dense.sites(tokens), sparse.sites(tokens)
        parts = []
        for j, m in enumerate(bridges.dense_sites):
            for x in (h_sparse[j], h_dense[m]):
                flat = x.double().flatten(0, -2)  # [tokens, d]
                parts += [flat.sum(0), flat.square().sum()[None]]
        parts.append(torch.tensor([tokens.numel()], dtype=torch.float64, device=tokens.device))
        return torch.cat(parts)


def _site_moments(moments: Tensor, bridges: Bridges) -> list[tuple[Tensor, Tensor]]:
    """Per site and kind (encoder target, then decoder target): (Σ x [d], Σ |x|²)."""
    out, at = [], 0
    for _ in range(len(bridges)):
        for d in (bridges.d_sparse, bridges.d_dense):
            out.append((moments[at : at + d], moments[at + d]))
            at += d + 1
    return out


def target_means(moments: Tensor, bridges: Bridges) -> list[Tensor]:
    """Per site, the mean encoder target [d_sparse] and decoder target [d_dense], in that
    order (2 · sites tensors), from summed `target_moments`."""
    n = moments[-1]
    return [(total / n).float() for total, _ in _site_moments(moments, bridges)]


def target_spreads(moments: Tensor, bridges: Bridges) -> Tensor:
    """[2, sites] (encoder targets, decoder targets): the mean over tokens of |x − mean|² of
    each site's target, from summed `target_moments`."""
    n = moments[-1]
    spread = [
        sumsq / n - (total / n).square().sum() for total, sumsq in _site_moments(moments, bridges)
    ]
    return torch.stack(spread).view(len(bridges), 2).t().float()


def kl_from(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_reference ‖ p) per token, averaged over tokens; logits [..., vocab]."""
    ref = F.log_softmax(reference_logits.float().flatten(0, -2), dim=-1)
    log_p = F.log_softmax(logits.float().flatten(0, -2), dim=-1)
    return F.kl_div(log_p, ref, log_target=True, reduction="batchmean")


LOSS_KINDS = ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d")
"""The per-site losses, in the order of `BridgeLosses.per_site()`."""


@dataclasses.dataclass(frozen=True)
class BridgeLosses:
    """One batch's losses: 0-d tensors (per site: [n_sites]) that backpropagate."""

    ce: Tensor
    nmse_enc: Tensor  # [n_sites]
    nmse_dec: Tensor  # [n_sites]
    kl_d2s: Tensor  # [n_sites]
    kl_s2d: Tensor  # [n_sites]

    def total(self, cfg: BridgeConfig, *, ce_scale: float = 1.0, scale: float = 1.0) -> Tensor:
        """The weighted objective; a micro-batch's share of a batch's objective scales its CE
        by `ce_scale` (its share of the batch's targets) and the rest by `scale`."""
        bridges = (
            cfg.nmse * (self.nmse_enc.mean() + self.nmse_dec.mean())
            + cfg.kl_d2s * self.kl_d2s.mean()
            + cfg.kl_s2d * self.kl_s2d.mean()
        )
        return cfg.ce * ce_scale * self.ce + scale * bridges

    def per_site(self) -> Tensor:
        """[4, n_sites]: nmse_enc, nmse_dec, kl_d2s, kl_s2d (detached), for logging."""
        return torch.stack([self.nmse_enc, self.nmse_dec, self.kl_d2s, self.kl_s2d]).detach()


def bridge_losses(
    dense: ResidualSites,
    sparse: ResidualSites,
    bridges: Bridges,
    tokens: Tensor,
    targets: Tensor,
    cfg: BridgeConfig,
    spreads: Tensor | None = None,
) -> BridgeLosses:
    """The losses of one batch (tokens and next-token targets [B, T], -100 = no target).

    The dense model runs without gradient except where the s→d hybrids pass through it.
    `spreads` [2, sites]: the NMSE denominators of the whole batch this one is part of
    (`target_spreads`); by default this batch's own."""
    with torch.no_grad():
        dense_sites = dense.sites(tokens)
        dense_logits = dense.run_from(dense.n_sites - 1, dense_sites[-1], tokens)
    sparse_sites = sparse.sites(tokens)
    sparse_logits = sparse.run_from(sparse.n_sites - 1, sparse_sites[-1], tokens)
    ce = F.cross_entropy(sparse_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    enc, dec, d2s, s2d = [], [], [], []
    for j, h_sparse in enumerate(sparse_sites):
        m = bridges.dense_sites[j]
        encoded = bridges.encode(j, dense_sites[m])
        decoded = bridges.decode(j, h_sparse)
        enc.append(nmse(encoded, h_sparse.detach(), None if spreads is None else spreads[0, j]))
        dec.append(nmse(decoded, dense_sites[m], None if spreads is None else spreads[1, j]))
        if cfg.kl_d2s:
            d2s.append(kl_from(dense_logits, sparse.run_from(j, encoded, tokens)))
        if cfg.kl_s2d:
            s2d.append(kl_from(dense_logits, dense.run_from(m, decoded, tokens)))
    zeros = torch.zeros(len(sparse_sites), device=tokens.device)
    return BridgeLosses(
        ce=ce,
        nmse_enc=torch.stack(enc),
        nmse_dec=torch.stack(dec),
        kl_d2s=torch.stack(d2s) if d2s else zeros,
        kl_s2d=torch.stack(s2d) if s2d else zeros,
    )
