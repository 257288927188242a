"""Mean-ablation statistics: each node's mean activation over pretraining data.

Means are taken with the model exactly as it runs (AbsTopK on), over every real token position
of evenly spread windows of the model's training split, accumulated in float64. A channel that
AbsTopK usually zeroes has a mean near zero, as it should: ablating it then changes little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from sparse_tf.data.tokens import IGNORE, Windows, eval_indices
from sparse_tf.errors import SparseTFError
from sparse_tf.io import atomic_write_bytes
from sparse_tf.model import GPT
from sparse_tf.pruning.nodes import NodeSite


class MeansError(SparseTFError):
    """A means file that is unreadable or does not fit the model."""


@torch.no_grad()
def ablation_means(
    model: GPT,
    windows: Windows,
    sites: Sequence[NodeSite],
    *,
    n_windows: int = 256,
    batch_size: int = 16,
    amp: bool = False,
) -> dict[str, Tensor]:
    """Hook name → mean activation [width] (float32, on the model's device) over the real
    tokens of `n_windows` windows spread evenly over `windows`."""
    if len(windows) == 0:
        raise MeansError("no pretraining windows to take ablation means over")
    device = next(model.parameters()).device
    sums = {s.name: torch.zeros(s.width, dtype=torch.float64, device=device) for s in sites}
    count = 0
    valid: Tensor | None = None  # [B, T] bool: real input positions of the current batch

    def accumulate(x: Tensor, hook: nn.Module) -> None:
        assert valid is not None
        sums[hook.name] += x[valid].double().sum(0)  # type: ignore[index]

    indices = eval_indices(len(windows), n_windows)
    with model.hooks([(s.name, accumulate) for s in sites]):
        for i in range(0, len(indices), batch_size):
            x, y = windows.get(indices[i : i + batch_size])
            # A window's inputs are real where it has a next token (padding only at the end of
            # the stream); the last real position of the stream is left out, which is harmless.
            valid = (y != IGNORE).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model(x.to(device))
            count += int(valid.sum())
    return {name: (s / max(count, 1)).float() for name, s in sums.items()}


MODEL_DIGEST_KEY = "model_sha256"
"""Metadata key of a means file: the sha256 of the weights file of the model they are for."""


def save_means(path: Path, means: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write means as safetensors (keys: hook names), atomically."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in means.items()}
    atomic_write_bytes(Path(path), save(tensors, metadata=dict(metadata)))


def load_means(
    path: str | Path,
    sites: Sequence[NodeSite],
    device: torch.device | str = "cpu",
    model_sha256: str | None = None,
) -> dict[str, Tensor]:
    """Read a means file and check it covers every site with the right width, and, given the
    sha256 of the model's weights file, that the means were computed for that model (files
    that record no digest cannot be checked: they pass)."""
    path = Path(path)
    if model_sha256 is not None:
        try:
            with safe_open(str(path), framework="pt") as f:
                recorded = (f.metadata() or {}).get(MODEL_DIGEST_KEY)
        except FileNotFoundError:
            raise MeansError(f"{path}: file not found") from None
        except (SafetensorError, OSError) as e:
            raise MeansError(f"{path}: unreadable safetensors file ({e})") from None
        if recorded is not None and recorded != model_sha256:
            raise MeansError(
                f"{path}: computed for another model (weights sha256 {recorded[:12]}..., this "
                f"model's {model_sha256[:12]}...): ablation means are per model"
            )
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise MeansError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise MeansError(f"{path}: unreadable safetensors file ({e})") from None
    out = {}
    for s in sites:
        t = tensors.get(s.name)
        if t is None:
            raise MeansError(f"{path}: no means for hook {s.name!r}")
        if tuple(t.shape) != (s.width,):
            raise MeansError(
                f"{path}: means of {s.name!r} have shape {list(t.shape)}, the model needs "
                f"[{s.width}]"
            )
        if not torch.isfinite(t).all():
            raise MeansError(f"{path}: means of {s.name!r} are not finite")
        out[s.name] = t.float().to(device)
    return out
