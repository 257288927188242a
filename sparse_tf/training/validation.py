"""The validation loss: a model's mean next-token loss on held-out windows."""

from __future__ import annotations

import numpy as np
import torch

from sparse_tf.data.tokens import Windows, eval_indices
from sparse_tf.model import target_loss
from sparse_tf.parallel import launch
from sparse_tf.trainable import TrainableModel


@torch.no_grad()
def validation_loss(
    model: TrainableModel,
    windows: Windows,
    limit: int | None,
    batch_size: int,
    amp: bool = False,
    world: launch.World = launch.World(),
) -> float:
    """Mean next-token loss of `model` (on its own device) over `limit` evenly spread windows
    (all when None), `batch_size` windows at a time; bf16 autocast when `amp`.

    With several ranks (`world`; every rank calls this) each takes a consecutive share of the
    windows and the sums are all-reduced. The shares are padded to equal length with windows
    that are not counted, so that every rank runs as many forward passes (an FSDP forward is
    collective)."""
    device = next(model.parameters()).device
    indices = eval_indices(len(windows), limit)
    n_real = len(indices)
    if world.distributed:
        per_rank = -(-len(indices) // world.size)
        start = min(world.rank * per_rank, len(indices))
        indices = indices[start : start + per_rank]
        n_real = len(indices)  # the padding (a repeat of the first window) comes after these
        indices = np.concatenate([indices, np.zeros(per_rank - n_real, dtype=indices.dtype)])
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(indices), batch_size):
        x, y = windows.get(indices[i : i + batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x.to(device))
        real = max(0, min(batch_size, n_real - i))  # rows that are not padding
        if real:
            y = y[:real].to(device)
            loss_sum += target_loss(logits[:real], y, reduction="sum").double()
            count += (y != -100).sum()
    if world.distributed:
        sums = torch.stack([loss_sum, count])
        torch.distributed.all_reduce(sums)
        loss_sum, count = sums[0], sums[1]
    return float(loss_sum) / float(count)
