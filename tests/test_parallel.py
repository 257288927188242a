"""Multi-process pieces on CPU ranks (gloo): the sharded projection keeps exactly what one
process keeps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparse_tf import kernels
from sparse_tf.kernels import reference
from sparse_tf.sparsity import COLS, ROWS

MIN_PER_NEURON = 4


def matrices(seed: int) -> list[tuple[torch.Tensor, int | None, int]]:
    """(weight, neuron_dim, kept count): ordinary weights, exact ties (small integers),
    zeros, an all-zero matrix, K at the protection size and at numel, few rows per rank."""
    g = torch.Generator().manual_seed(seed)
    ties = torch.randint(-3, 4, (12, 40), generator=g).float()
    sparse = torch.randn(30, 16, generator=g) * (torch.rand(30, 16, generator=g) < 0.3)
    out = [
        (torch.randn(24, 32, generator=g), ROWS, 100),
        (torch.randn(24, 32, generator=g), COLS, 150),
        (ties, ROWS, 12 * 4 + 7),
        (ties.clone(), COLS, 40 * 4 + 3),
        (sparse, COLS, 70),
        (torch.zeros(9, 10), ROWS, 50),
        (torch.randn(5, 64, generator=g), None, 17),
        (torch.randn(6, 7, generator=g), COLS, 42),  # K = numel
        (torch.randn(3, 50, generator=g), COLS, 50 * 3),  # protection is everything
    ]
    return out


def single_process(seed: int) -> list[torch.Tensor]:
    masks = []
    for w, dim, k in matrices(seed):
        protected = None
        if dim == ROWS:
            protected = reference.topk_mask(w.abs(), MIN_PER_NEURON)
        elif dim == COLS:
            protected = reference.topk_mask(w.abs().t(), MIN_PER_NEURON).t()
        masks += kernels.projection_masks([w], [protected], [k])
    return masks


def split_rows(n: int, world: int, rank: int) -> slice:
    """Uneven consecutive blocks, the last rank possibly empty (as FSDP's padded shards)."""
    per = -(-n // world)
    return slice(min(rank * per, n), min((rank + 1) * per, n))


def _worker(rank: int, world: int, init: str, seed: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from sparse_tf.parallel import sharded_projection_masks

    mats = matrices(seed)
    shards = [w[split_rows(w.shape[0], world, rank)] for w, _, _ in mats]
    masks = sharded_projection_masks(
        shards, [d for _, d, _ in mats], [k for _, _, k in mats], MIN_PER_NEURON
    )
    np.savez(Path(out) / f"rank{rank}.npz", *[m.numpy() for m in masks])
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo workers can abort in interpreter teardown; nothing is left to do


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_sharded_projection_keeps_the_single_process_set(
    world: int, seed: int, tmp_path: Path
) -> None:
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(
        _worker, args=(world, init, seed, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    parts = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for i, expected in enumerate(single_process(seed)):
        got = np.concatenate([p[f"arr_{i}"] for p in parts], axis=0)
        assert got.shape == tuple(expected.shape)
        assert np.array_equal(got, expected.numpy()), f"matrix {i}"
        assert got.sum() == matrices(seed)[i][2]
