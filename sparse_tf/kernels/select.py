"""Weight projection on the GPU: the exact top-K of many matrices at once, by radix select.

Every matrix's magnitudes become int32 keys (the fp32 bit pattern of |w|, which orders like
|w|; protected entries get the key of +inf) in one flat buffer, one fused launch per matrix.
Four passes, one per 8-bit digit from the top, each count that digit among the keys still tied
with the threshold found so far (a histogram per chunk of the buffer, added atomically into one
histogram per matrix; in the last two passes so few keys are still tied that they are added one
by one), and a tiny kernel per matrix picks the digit where the count from the top reaches K.
After the four passes the threshold is exactly the K-th largest key. Then the ties at the
threshold are ranked in index order across chunks (per-chunk counts, an exclusive scan) so that
exactly K entries are kept: the library's rule, the same kept set as `reference.topk_mask`.
`topk_masks` writes the kept sets as masks; `project_` zeroes the dropped entries in place.

Every launch is shared by all matrices except the key building and the in-place zeroing (one
per matrix); nothing waits for the host, so the whole projection can be replayed as one CUDA
graph (`sparse_tf.kernels.graphs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import triton
import triton.language as tl
from torch import Tensor

INF_KEY = tl.constexpr(0x7F800000)
"""Key of +inf: protected entries outrank every finite magnitude."""
CHUNK = 4096
"""Keys per program; chunks never straddle two matrices."""
_KEY_BLOCK = 2048


@triton.jit
def _load_chunk(
    c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK: tl.constexpr
):  # fmt: skip
    """Chunk c's flat offsets, their validity, its keys (-1 past its matrix's end: below every
    real key), its matrix and that matrix's threshold so far."""
    end = tl.load(chunk_end_ptr + c)
    seg = tl.load(chunk_seg_ptr + c)
    offs = tl.load(chunk_start_ptr + c) + tl.arange(0, CHUNK)
    valid = offs < end
    key = tl.load(keys_ptr + offs, mask=valid, other=-1)
    return offs, valid, key, seg, tl.load(state_ptr + 2 * seg)


@triton.jit
def _keys_kernel(
    w_ptr, p_ptr, keys_ptr, n, cols, p_stride_r, p_stride_c,
    HAS_P: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One matrix's keys into its slice of the flat buffer: the fp32 bit pattern of |w|, or
    the key of +inf where the protection mask (any strides: a transposed view works) is set."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    w = tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    key = tl.abs(w).to(tl.int32, bitcast=True)
    if HAS_P:
        protect = tl.load(p_ptr + (offs // cols) * p_stride_r + (offs % cols) * p_stride_c,
                          mask=valid, other=0)  # fmt: skip
        key = tl.where(protect != 0, INF_KEY, key)
    tl.store(keys_ptr + offs, key, mask=valid)


@triton.jit
def _digit_histogram_kernel(
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, hist_ptr,
    HI: tl.constexpr, LO: tl.constexpr, CHUNK: tl.constexpr, FEW: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    _, valid, key, seg, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    # Keys whose bits above HI equal the threshold's are still undecided; count their digit.
    match = valid & ((key >> (HI + 1)) == (t >> (HI + 1)))
    digit = (key >> LO) & 255
    bins = tl.arange(0, 512)
    if FEW:
        # Late passes: few keys are still tied with the threshold's prefix, so add them one
        # by one; a chunk where many are (long runs of equal keys) takes the histogram.
        if tl.sum(match.to(tl.int32), axis=0) <= 32:
            tl.atomic_add(hist_ptr + 256 * seg + digit, 1, mask=match)
        else:
            h = tl.histogram(tl.where(match, digit, 256), 512)
            tl.atomic_add(hist_ptr + 256 * seg + bins, h, mask=bins < 256)
    else:
        h = tl.histogram(tl.where(match, digit, 256), 512)  # bins 256.. collect the others
        tl.atomic_add(hist_ptr + 256 * seg + bins, h, mask=bins < 256)


@triton.jit
def _pick_digit_kernel(hist_ptr, state_ptr, k_ptr, LO: tl.constexpr):
    seg = tl.program_id(0)
    bins = tl.arange(0, 256)
    h = tl.load(hist_ptr + 256 * seg + bins)
    t = tl.load(state_ptr + 2 * seg)
    n_above = tl.load(state_ptr + 2 * seg + 1)
    k = tl.load(k_ptr + seg)
    suffix = tl.cumsum(h, axis=0, reverse=True)  # undecided keys with digit >= bin
    b = tl.max(tl.where(suffix >= k - n_above, bins, -1), axis=0)
    n_above += tl.sum(tl.where(bins > b, h, 0), axis=0)
    tl.store(state_ptr + 2 * seg, t | (b << LO))
    tl.store(state_ptr + 2 * seg + 1, n_above)
    tl.store(hist_ptr + 256 * seg + bins, tl.zeros((256,), dtype=tl.int32))


@triton.jit
def _count_ties_kernel(
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, ties_ptr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    _, _, key, _, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    tl.store(ties_ptr + c, tl.sum((key == t).to(tl.int32), axis=0))


@triton.jit
def _kept(c, key, seg, t, k_ptr, state_ptr, tie_prefix_ptr):
    """Chunk c's kept entries: keys above the threshold t, and the ties at t whose rank in
    index order (across the matrix's chunks) is within the room K leaves for them."""
    keep = key > t
    tied = key == t
    if tl.sum(tied.to(tl.int32), axis=0) > 0:  # rare: skip the scan in chunks without ties
        room = tl.load(k_ptr + seg) - tl.load(state_ptr + 2 * seg + 1)
        rank = tl.load(tie_prefix_ptr + c) + tl.cumsum(tied.to(tl.int32), axis=0)  # 1-based
        keep = keep | (tied & (rank <= room))
    return keep


@triton.jit
def _keep_kernel(
    keys_ptr, keep_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, k_ptr,
    tie_prefix_ptr, CHUNK: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    offs, valid, key, seg, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    keep = _kept(c, key, seg, t, k_ptr, state_ptr, tie_prefix_ptr)
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=valid)


@triton.jit
def _zero_dropped_kernel(
    w_ptr, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, k_ptr,
    tie_prefix_ptr, first_chunk, base, CHUNK: tl.constexpr,
):  # fmt: skip
    """`_keep_kernel` for one matrix, applied: zero its entries outside the kept set."""
    c = first_chunk + tl.program_id(0)
    offs, valid, key, seg, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    keep = _kept(c, key, seg, t, k_ptr, state_ptr, tie_prefix_ptr)
    zero = tl.zeros((CHUNK,), dtype=w_ptr.dtype.element_ty)
    tl.store(w_ptr + (offs - base), zero, mask=valid & ~keep)


@dataclass(frozen=True)
class _Layout:
    """Where each matrix sits in the flat key buffer, and the chunks that cover it."""

    offsets: tuple[int, ...]  # start of each matrix, then the total
    chunk_start: Tensor  # [n_chunks] int64
    chunk_end: Tensor  # [n_chunks] int64 (end of the chunk's matrix)
    chunk_seg: Tensor  # [n_chunks] int32
    seg_first_chunk: Tensor  # [n_segs] int64
    chunks: tuple[tuple[int, int], ...]  # per matrix: (first chunk, number of chunks)


_LAYOUTS: dict[tuple[tuple[int, ...], str, int], _Layout] = {}


def _layout(numels: tuple[int, ...], device: torch.device, chunk: int) -> _Layout:
    cache_key = (numels, str(device), chunk)
    if cache_key not in _LAYOUTS:
        offsets, starts, ends, segs, firsts = [0], [], [], [], []
        for seg, n in enumerate(numels):
            base = offsets[-1]
            firsts.append(len(starts))
            for s in range(base, base + n, chunk):
                starts.append(s)
                ends.append(base + n)
                segs.append(seg)
            offsets.append(base + n)

        def tensor(values: list[int], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        _LAYOUTS[cache_key] = _Layout(
            offsets=tuple(offsets),
            chunk_start=tensor(starts, torch.int64),
            chunk_end=tensor(ends, torch.int64),
            chunk_seg=tensor(segs, torch.int32),
            seg_first_chunk=tensor(firsts, torch.int64),
            chunks=tuple(
                (f, e - f) for f, e in zip(firsts, [*firsts[1:], len(starts)], strict=True)
            ),
        )
    return _LAYOUTS[cache_key]


@dataclass(frozen=True)
class _Selection:
    """Each matrix's exact threshold, and what `_keep_kernel` / `_zero_dropped_kernel` need."""

    layout: _Layout
    keys: Tensor  # [total] int32
    state: Tensor  # [n_segs, 2] int32: threshold key, count of keys above it
    k: Tensor  # [n_segs] int32
    tie_prefix: Tensor  # [n_chunks] int32: ties at the threshold in earlier chunks of the matrix


def _select(
    weights: Sequence[Tensor],
    protected: Sequence[Tensor | None],
    ks: Sequence[int] | Tensor,
    chunk: int,
    group: dist.ProcessGroup | None = None,
) -> _Selection:
    device = weights[0].device
    layout = _layout(tuple(w.numel() for w in weights), device, chunk)
    keys = torch.empty(layout.offsets[-1], dtype=torch.int32, device=device)
    for i, (w, p) in enumerate(zip(weights, protected, strict=True)):
        if not w.is_contiguous():
            raise ValueError("projection: weights must be contiguous")
        n, cols = w.numel(), w.shape[-1]
        if n == 0:  # an empty shard
            continue
        _keys_kernel[(triton.cdiv(n, _KEY_BLOCK),)](
            w, w if p is None else p.view(torch.uint8), keys[layout.offsets[i] :], n, cols,
            0 if p is None else p.stride(0), 0 if p is None else p.stride(1),
            HAS_P=p is not None, BLOCK=_KEY_BLOCK,
        )  # fmt: skip
    n_segs, n_chunks = len(weights), layout.chunk_start.numel()
    k = ks if isinstance(ks, Tensor) else torch.tensor(ks, dtype=torch.int32, device=device)
    state = torch.zeros(n_segs, 2, dtype=torch.int32, device=device)  # threshold, count above
    hist = torch.zeros(n_segs, 256, dtype=torch.int32, device=device)
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg)
    for hi, lo in ((30, 23), (22, 15), (14, 7), (6, 0)):  # the last digit overlaps by one bit
        # After two digits (16 bits) few keys still share the threshold's prefix.
        if n_chunks:
            _digit_histogram_kernel[(n_chunks,)](
                keys, *table, state, hist, HI=hi, LO=lo, CHUNK=chunk, FEW=hi < 16
            )
        if group is not None:  # row shards: the digit counts of the whole matrices
            dist.all_reduce(hist, group=group)
        _pick_digit_kernel[(n_segs,)](hist, state, k, LO=lo)
    ties = torch.empty(n_chunks, dtype=torch.int32, device=device)
    if n_chunks:
        _count_ties_kernel[(n_chunks,)](keys, *table, state, ties, CHUNK=chunk)
    before = torch.cumsum(ties, 0, dtype=torch.int64) - ties  # ties in earlier chunks
    seg = layout.chunk_seg.long()
    first = layout.seg_first_chunk.clamp(max=max(n_chunks - 1, 0))  # empty shards: unused
    prefix = before - before[first][seg] if n_chunks else before
    if group is not None:  # ties in the rows of lower ranks come first (global flat order)
        per_seg = torch.zeros(n_segs, dtype=torch.int64, device=device)
        per_seg.index_add_(0, seg, ties.long())
        every = [torch.empty_like(per_seg) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, per_seg, group=group)
        if rank := dist.get_rank(group):
            prefix = prefix + torch.stack(every[:rank]).sum(0)[seg]
    return _Selection(layout, keys, state, k, prefix.to(torch.int32))


def topk_masks(
    weights: Sequence[Tensor],
    protected: Sequence[Tensor | None],
    ks: Sequence[int] | Tensor,
    chunk: int = CHUNK,
    group: dist.ProcessGroup | None = None,
) -> list[Tensor]:
    """For each matrix, the bool mask of its `k` largest |w| (protected entries first; ties: the
    lower flat index), all matrices in shared launches. 1 <= k <= numel. `ks` may already be an
    int32 tensor on the device; then nothing here waits for the host (CUDA-graph capturable).
    `group`: the weights are row shards, as in `project_`."""
    if not weights:
        return []
    sel = _select(weights, protected, ks, chunk, group)
    layout = sel.layout
    keep = torch.empty(layout.offsets[-1], dtype=torch.uint8, device=weights[0].device)
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg)
    _keep_kernel[(layout.chunk_start.numel(),)](
        sel.keys, keep, *table, sel.state, sel.k, sel.tie_prefix, CHUNK=chunk
    )
    keep = keep.view(torch.bool)
    return [
        keep[layout.offsets[i] : layout.offsets[i + 1]].view(w.shape) for i, w in enumerate(weights)
    ]


def project_(
    weights: Sequence[Tensor],
    protected: Sequence[Tensor | None],
    ks: Sequence[int] | Tensor,
    chunk: int = CHUNK,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Zero, in place, every entry of each matrix outside the set `topk_masks` would keep.

    With `group`, each of `weights` is this rank's block of consecutive rows of a matrix split
    over the group's ranks in rank order, `protected` its part of the protection mask and `ks`
    the whole matrices' kept counts: the kept set is the whole matrix's (an all-reduce of the
    histograms per digit pass and an all-gather of the tie counts; every rank calls this)."""
    if not weights:
        return
    sel = _select(weights, protected, ks, chunk, group)
    layout = sel.layout
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg)
    for w, (first, count), base in zip(weights, layout.chunks, layout.offsets, strict=False):
        if count == 0:  # an empty shard
            continue
        _zero_dropped_kernel[(count,)](
            w, sel.keys, *table, sel.state, sel.k, sel.tie_prefix, first, base, CHUNK=chunk
        )
