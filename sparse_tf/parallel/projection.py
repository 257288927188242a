"""Exact L0 projection of row-sharded matrices: every rank keeps what one process would keep.

Under FSDP each rank holds a contiguous block of rows of every matrix (rank 0 the first rows,
rank 1 the next, ...). The single-process projection (`sparse_tf.sparsity.project_weights_`)
keeps, per matrix, the entries protected for their neuron (the `min_per_neuron` largest |w| of
each neuron, ties to the lower index) and then the largest |w| up to the kept count K, ties to
the lower row-major index. Here the same kept set is found from the shards with a few
collectives batched across all matrices:

1. Protection. Row neurons (qkv, MLP-in) are whole on each rank: protected locally. Column
   neurons (attention-out, MLP-out) span ranks: each rank offers the j best entries of each
   column it holds (value, global row), one all_gather for all matrices, and every rank picks
   the same j per column, the lower row winning ties.
2. Threshold. Keys are the fp32 bit patterns of |w| (which order like the values), protected
   entries above all. The K-th largest key of each matrix is found digit by digit, 8 bits at
   a time from the top: a histogram of the next digit among keys matching the prefix so far,
   summed over ranks (one all_reduce of [matrices, 256] counts per pass, 4 passes).
3. Ties. Keys equal to the threshold are admitted in global flat order: the ranks' tie counts
   are gathered (one all_gather), and each rank admits its first ties after those of lower
   ranks until the matrix holds exactly K.

Seven collectives in all, whatever the number of matrices (row offsets, protection, four
histogram passes, ties); six under FSDP, whose row offsets follow from the shapes. Everything
is integer arithmetic on exact keys, so the kept sets equal the single-process ones bit for bit
(tests/test_parallel.py checks this on 2 and 3 CPU ranks, and through FSDP training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from sparse_tf import kernels
from sparse_tf.kernels.rule import topk_mask
from sparse_tf.parallel.fsdp import local, row_offset, row_shard_group
from sparse_tf.sparsity import register_sharded_projection

_PROTECTED = 1 << 31  # above every fp32 bit pattern of a finite |w|
_DIGIT_BITS = 8
_PASSES = 4  # 32 bits of key (the protected value has bit 31)


def _keys(w: Tensor, protected: Tensor | None) -> Tensor:
    """int64 keys [rows, cols] ordering like |w|, protected entries above all."""
    key = w.detach().float().abs().view(torch.int32).to(torch.int64)
    return key if protected is None else key.masked_fill(protected, _PROTECTED)


def _column_candidates(w: Tensor, j: int, row0: int) -> Tensor:
    """[2, cols, j] int64: the j best entries of each column of this shard as (key, global
    row); missing ones (fewer than j local rows) have key -1 and can never be chosen."""
    rows, cols = w.shape
    key = _keys(w, None).t()  # [cols, rows]
    out = torch.empty(2, cols, j, dtype=torch.int64, device=w.device)
    out[0], out[1] = -1, (1 << 32) - 1
    take = min(j, rows)
    if take:
        local = topk_mask(key, take)  # lower row wins ties, as the reference
        idx = local.nonzero()[:, 1].view(cols, take)  # ascending local rows per column
        out[0, :, :take] = key.gather(1, idx)
        out[1, :, :take] = idx + row0
    return out


def _protect_columns(
    shards: list[Tensor], j: int, row0: list[int], group: dist.ProcessGroup | None
) -> list[Tensor]:
    """Per shard, bool [rows, cols]: its entries among the j largest |w| of their column over
    all ranks (ties: lower global row). One all_gather for all the matrices."""
    if not shards:
        return []
    mine = torch.cat([_column_candidates(w, j, r) for w, r in zip(shards, row0, strict=True)], 1)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    all_key, all_row = torch.cat(gathered, dim=2)  # [sum of cols, world·j] each
    # Larger key first, then lower row: one composite per candidate, distinct and within int64
    # (keys of finite |w| are below 2^31, rows below 2^32).
    composite = all_key * (1 << 32) + ((1 << 32) - 1 - all_row)
    chosen = all_row.gather(1, composite.topk(j, dim=1).indices)  # [sum of cols, j]
    out, start = [], 0
    for w, r in zip(shards, row0, strict=True):
        rows, cols = w.shape
        local_rows = chosen[start : start + cols] - r  # [cols, j]
        start += cols
        inside = (local_rows >= 0) & (local_rows < rows)
        col_idx = torch.arange(cols, device=w.device)[:, None].expand_as(local_rows)
        mask = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
        mask[local_rows[inside], col_idx[inside]] = True
        out.append(mask)
    return out


def sharded_protection(
    shards: Sequence[Tensor],
    neuron_dims: Sequence[int | None],
    j: int,
    row0: Sequence[int],
    group: dist.ProcessGroup | None = None,
) -> list[Tensor | None]:
    """Per row shard, the mask of its entries that protection keeps (the j largest |w| of
    their neuron over all ranks, ties to the lower index), None for unprotected matrices.
    Row neurons are whole on each rank; column neurons take one all_gather for all."""
    protected: list[Tensor | None] = [None] * len(shards)
    if j == 0:
        return protected
    by_column = [i for i, d in enumerate(neuron_dims) if d == 1]
    column_masks = _protect_columns(
        [shards[i] for i in by_column], j, [row0[i] for i in by_column], group
    )
    for i, mask in zip(by_column, column_masks, strict=True):
        protected[i] = mask
    for i, (w, d) in enumerate(zip(shards, neuron_dims, strict=True)):
        if d == 0:
            protected[i] = _row_protection(w, j)
    return protected


def _row_protection(w: Tensor, j: int) -> Tensor:
    """The j largest |w| of each row (ties: lower column): the AbsTopK kernel on CUDA."""
    if w.shape[0] == 0:
        return torch.zeros_like(w, dtype=torch.bool)
    return kernels.abs_topk_mask(w.detach(), min(j, w.shape[1]))


def sharded_projection_masks(
    shards: Sequence[Tensor],
    neuron_dims: Sequence[int | None],
    ks: Sequence[int],
    min_per_neuron: int,
    group: dist.ProcessGroup | None = None,
    row0: Sequence[int] | None = None,
) -> list[Tensor]:
    """Kept-set masks of this rank's row shards of several matrices.

    Args:
        shards: per matrix, this rank's rows [rows_r, cols] (rows_r may be 0); the ranks hold
            consecutive row blocks in rank order.
        neuron_dims: per matrix, 0 (rows are neurons), 1 (columns are neurons) or None (no
            protection), as `SparseWeight.neuron_dim`.
        ks: per matrix, the global kept count (`sparsity.kept_count`), 1 <= k <= numel.
        min_per_neuron: the protection j.
        group: the process group (default: the world).
        row0: per matrix, the global index of this rank's first row, when the caller knows
            it (FSDP's layout); None gathers the ranks' row counts (one more collective).

    Returns:
        Per matrix, a bool mask of this rank's shard: the entries the single-process
        projection keeps. Every rank must call this with the same matrices and ks.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = shards[0].device
    n = len(shards)
    if row0 is None:  # where each rank's rows start: one gather of the local row counts
        counts = torch.tensor([s.shape[0] for s in shards], dtype=torch.int64, device=device)
        gathered = [torch.empty_like(counts) for _ in range(world)]
        dist.all_gather(gathered, counts, group=group)
        row0 = torch.stack(gathered)[:rank].sum(dim=0).tolist() if rank else [0] * n

    protected = sharded_protection(shards, neuron_dims, min_per_neuron, row0, group)
    keys = [_keys(w, p).view(-1) for w, p in zip(shards, protected, strict=True)]

    # Radix select of the K-th largest key of every matrix, 8 bits per pass from the top.
    remaining = torch.tensor(list(ks), dtype=torch.int64, device=device)  # still to place
    prefix = torch.zeros(n, dtype=torch.int64, device=device)  # chosen high bits
    for p in range(_PASSES):
        shift = _DIGIT_BITS * (_PASSES - 1 - p)
        hist = torch.zeros(n, 1 << _DIGIT_BITS, dtype=torch.int64, device=device)
        for i, key in enumerate(keys):
            match = (key >> (shift + _DIGIT_BITS)) == (prefix[i] >> (shift + _DIGIT_BITS))
            digits = (key[match] >> shift) & ((1 << _DIGIT_BITS) - 1)
            hist[i] = torch.bincount(digits, minlength=1 << _DIGIT_BITS)
        dist.all_reduce(hist, group=group)
        # From the top digit down: the digit where the running count reaches `remaining`.
        above = hist.flip(1).cumsum(1).flip(1) - hist  # [n, 256] keys with a larger digit
        digit = ((above < remaining[:, None]) & (above + hist >= remaining[:, None])).int()
        digit = digit.argmax(dim=1)  # exactly one digit qualifies per matrix
        remaining -= above.gather(1, digit[:, None]).squeeze(1)
        prefix |= digit << shift
    threshold = prefix  # [n]: the K-th largest key; `remaining` ties at it are kept

    # Ties in global flat order: ranks before this one admit theirs first.
    ties = torch.stack([(key == threshold[i]).sum() for i, key in enumerate(keys)])
    all_ties = [torch.empty_like(ties) for _ in range(world)]
    dist.all_gather(all_ties, ties, group=group)
    before = torch.stack(all_ties)[:rank].sum(dim=0) if rank else torch.zeros_like(ties)
    room = (remaining - before).clamp(min=0)  # [n] ties this rank may keep
    masks = []
    for i, (w, key) in enumerate(zip(shards, keys, strict=True)):
        tied = key == threshold[i]
        keep = (key > threshold[i]) | (tied & (tied.cumsum(0) <= room[i]))
        masks.append(keep.view(w.shape))
    return masks


@torch.no_grad()
def project_sharded_(
    params: Sequence[Tensor], neuron_dims: Sequence[int | None], ks: Sequence[int], j: int
) -> None:
    """Project FSDP-sharded matrices (DTensors, rows split over the ranks) in place to their
    kept sets: entries outside them become 0 on every rank's shard. Collective: every rank
    calls it with the same matrices; the result equals the single-process projection."""
    group = row_shard_group(list(params))
    shards = [local(p) for p in params]
    row0 = [row_offset(p) for p in params]  # type: ignore[arg-type]
    if kernels.projection_backend(shards[0]) == "triton":
        # The radix-select kernels, with the digit histograms and tie counts summed over ranks.
        protected = sharded_protection(shards, neuron_dims, j, row0, group)
        kernels.projection.project_(shards, protected, ks, group=group)
        return
    masks = sharded_projection_masks(shards, neuron_dims, ks, j, group, row0)
    for shard, keep in zip(shards, masks, strict=True):
        shard.masked_fill_(~keep, 0.0)


# `sparse_tf.sparsity.project_weights_` (below this package) projects sharded matrices with it.
register_sharded_projection(project_sharded_)
