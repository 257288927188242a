"""A sparse GPT trained together with bridges to a frozen dense GPT-2: what the trainer runs
for `sparse-tf bridge`, and the folder it exports.

`BridgedModel` holds the sparse GPT and the bridges as submodules (trained, checkpointed) and
the dense model outside its module tree (frozen, never saved). `forward(tokens)` is the sparse
model's logits (validation, evaluation); `forward(tokens, targets=...)` the batch's
`BridgeLosses`. Its sparse matrices are the GPT's, named `sparse.<name>`, so the optimizer
projects them exactly as in plain training; the bridges are dense and decayed like weights.

Export (`OUT/final`): the sparse model's usual files (`load_model` reads them) plus

    bridges.safetensors   encoders.{j}.weight [d_sparse, d_dense], decoders.{j}.weight
                          [d_dense, d_sparse] and their biases, j = sparse site
    bridges.json          the pairing of sites, widths, AbsTopK of the encoders, the dense folder
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from sparse_tf.bridges.bridge import (
    LOSS_KINDS,
    BridgeConfig,
    BridgeLosses,
    Bridges,
    bridge_losses,
    target_means,
    target_moments,
    target_spreads,
)
from sparse_tf.bridges.dense import BridgeError
from sparse_tf.bridges.sites import GPT2Sites, SparseSites, site_name
from sparse_tf.checkpoint import load_model, write_manifest, write_model_files
from sparse_tf.data.tokens import Windows, eval_indices
from sparse_tf.filenames import BRIDGES_FILE, BRIDGES_META
from sparse_tf.io import atomic_dir, read_json, write_json
from sparse_tf.model import GPT
from sparse_tf.sparsity import SparseWeight

_FORMAT = "sparse_tf.bridges.v1"


class BridgedModel(nn.Module):
    """Sparse GPT + bridges, trained against the frozen `dense` GPT2LMHeadModel."""

    def __init__(self, sparse: GPT, dense: nn.Module, cfg: BridgeConfig) -> None:
        super().__init__()
        self.sparse = sparse
        self.cfg = sparse.cfg  # what checkpoints record as the model config
        self.bridge_cfg = cfg
        self._dense = (dense,)  # a tuple keeps it out of parameters() and state_dict()
        self.dense_sites = GPT2Sites(dense)
        self.sparse_sites = SparseSites(sparse)
        self.bridges = Bridges.between(self.dense_sites, self.sparse_sites, cfg)
        self.site_names = [site_name(j, sparse.cfg.n_layer) for j in range(len(self.bridges))]

    @property
    def dense(self) -> nn.Module:
        return self._dense[0]

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        *,
        targets: Tensor | None = None,
        spreads: Tensor | None = None,
    ) -> Tensor | BridgeLosses:
        """The sparse model's logits, or with `targets` [B, T] the batch's bridge losses
        (NMSE denominators `spreads` of the whole batch: see `target_moments`)."""
        if targets is None:
            return self.sparse(tokens, positions)
        return bridge_losses(
            self.dense_sites,
            self.sparse_sites,
            self.bridges,
            tokens,
            targets,
            self.bridge_cfg,
            spreads,
        )

    def target_moments(self, tokens: Tensor, chunk: int | None = None) -> Tensor:
        """`bridge.target_moments` of the windows `tokens` [B, T] (on any device), `chunk`
        windows at a time (default: all at once); no gradient."""
        device = next(self.parameters()).device
        step = chunk or len(tokens)
        parts = (
            target_moments(
                self.dense_sites, self.sparse_sites, self.bridges, tokens[i : i + step].to(device)
            )
            for i in range(0, len(tokens), step)
        )
        return torch.stack(list(parts)).sum(0)

    def target_spreads(self, moments: Tensor) -> Tensor:
        return target_spreads(moments, self.bridges)

    @torch.no_grad()
    def init_biases(self, moments: Tensor) -> None:
        """Start every bridge at its target's mean (bias = the mean residual of the site it
        predicts, weights 0) over the tokens of summed `target_moments`: NMSE then starts at
        1 instead of 1 + |mean|²/variance, which is in the hundreds for GPT-2's residual
        stream with its large constant offsets and would take Adam thousands of steps."""
        means = target_means(moments, self.bridges)
        for j in range(len(self.bridges)):
            self.bridges.encoders[j].bias.copy_(means[2 * j])
            self.bridges.decoders[j].bias.copy_(means[2 * j + 1])

    def grad_rms_groups(self) -> list[str]:
        """Parameter-name prefixes whose gradients `SparseOptimizer` normalises separately:
        the bridges' NMSE gradients dwarf the model's early on and would freeze it."""
        return ["sparse.", "bridges."]

    def sparse_weights(self) -> list[SparseWeight]:
        return [
            dataclasses.replace(w, name=f"sparse.{w.name}") for w in self.sparse.sparse_weights()
        ]

    def export(
        self, path: Path, tokenizer: Tokenizer, config: dict[str, Any] | None
    ) -> dict[str, int]:
        with atomic_dir(Path(path)) as tmp:
            sizes = write_model_files(tmp, self.sparse, tokenizer, config, compressed=True)
            state = self.bridges.state_dict()
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / BRIDGES_FILE
            )
            write_json(
                tmp / BRIDGES_META,
                {
                    "format": _FORMAT,
                    "dense": self.bridge_cfg.dense,
                    "d_dense": self.bridges.d_dense,
                    "d_sparse": self.bridges.d_sparse,
                    "dense_sites": self.bridges.dense_sites,
                    "sites": self.site_names,
                    "encoder_afrac": self.bridge_cfg.encoder_afrac,
                },
            )
            sizes[BRIDGES_FILE] = (tmp / BRIDGES_FILE).stat().st_size
            write_manifest(tmp)  # last: covers the bridges too (checked by load_bridged)
            return sizes


def load_bridged(
    path: str | Path, device: str | torch.device = "cpu", *, check_files: bool = True
) -> tuple[GPT, Bridges]:
    """The sparse model and its bridges from a `sparse-tf bridge` export (eval mode), every
    file checked against the folder's manifest first (`check_files=False` skips it)."""
    path = Path(path)
    model = load_model(path, device, check_files=check_files)
    meta_file, weights = path / BRIDGES_META, path / BRIDGES_FILE
    try:
        meta = read_json(meta_file)
        if meta.get("format") != _FORMAT:
            raise BridgeError(f"{meta_file}: not a sparse_tf bridges file")
        bridges = Bridges(
            meta["d_dense"], meta["d_sparse"], meta["dense_sites"], meta["encoder_afrac"]
        )
        bridges.load_state_dict(load_file(str(weights)))
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BridgeError(f"{path}: no readable bridges ({first})") from None
    if bridges.d_sparse != model.cfg.d_model or len(bridges) != 2 * model.cfg.n_layer + 1:
        raise BridgeError(f"{meta_file}: the bridges do not fit the model in {path}")
    return model, bridges.to(device).eval()


@dataclasses.dataclass(frozen=True)
class BridgeTable:
    """Mean per-site bridge losses over some windows: values[kind][site]."""

    sites: list[str]
    values: dict[str, list[float]]
    windows: int

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.windows, "sites": self.sites, **self.values}

    def format(self) -> str:
        kinds = list(self.values)
        lines = [
            f"bridges on {self.windows} validation windows (NMSE: fraction of variance "
            "unexplained; KL: nats per token to the dense model's output)",
            f"{'site':<12}" + "".join(f"{k:>10}" for k in kinds),
        ]
        for i, site in enumerate(self.sites):
            lines.append(f"{site:<12}" + "".join(f"{self.values[k][i]:>10.4f}" for k in kinds))
        return "\n".join(lines)


@torch.no_grad()
def bridge_validation(
    model: BridgedModel, windows: Windows, limit: int | None, batch_size: int
) -> BridgeTable:
    """Per-site bridge losses averaged over `limit` evenly spread windows (all when None),
    in the caller's autocast; `model` in eval mode."""
    device = next(model.parameters()).device
    indices = eval_indices(len(windows), limit)
    total = torch.zeros(len(LOSS_KINDS), len(model.bridges), device=device)
    for i in range(0, len(indices), batch_size):
        x, y = windows.get(indices[i : i + batch_size])
        parts = model(x.to(device), targets=y.to(device))
        total += parts.per_site() * len(x)
    means = (total / len(indices)).tolist()
    return BridgeTable(
        sites=model.site_names,
        values=dict(zip(LOSS_KINDS, means, strict=True)),
        windows=len(indices),
    )
