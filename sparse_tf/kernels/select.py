"""Weight projection on the GPU: the exact top-K of many matrices at once, by radix select.

Every matrix's magnitudes become int32 keys (the fp32 bit pattern of |w|, which orders like
|w|; protected entries get the key of +inf) in one flat buffer. Four passes, one per 8-bit digit
from the top, each count that digit among the keys still tied with the threshold found so far
(a histogram per chunk of the buffer, added atomically into one histogram per matrix), and a
tiny kernel per matrix picks the digit where the count from the top reaches K. After the four
passes the threshold is exactly the K-th largest key. Then the ties at the threshold are ranked
in index order across chunks (per-chunk counts, an exclusive scan) so that exactly K entries are
kept: the library's rule, the same kept set as `reference.topk_mask`.

All matrices share each launch: 4 x 2 + 2 launches plus the key and apply copies, instead of a
`torch.topk` and a whole-matrix scan per matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

INF_KEY = 0x7F800000
"""Key of +inf: protected entries outrank every finite magnitude."""
CHUNK = 4096
"""Keys per program; chunks never straddle two matrices."""


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
def _digit_histogram_kernel(
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, hist_ptr,
    HI: tl.constexpr, LO: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    _, valid, key, seg, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    # Keys whose bits above HI equal the threshold's are still undecided; count their digit.
    match = valid & ((key >> (HI + 1)) == (t >> (HI + 1)))
    digit = tl.where(match, (key >> LO) & 255, 256)
    h = tl.histogram(digit, 512)  # bins 256.. collect the keys that do not match
    bins = tl.arange(0, 512)
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
def _keep_kernel(
    keys_ptr, keep_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, k_ptr,
    tie_prefix_ptr, CHUNK: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    offs, valid, key, seg, t = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, CHUNK
    )
    room = tl.load(k_ptr + seg) - tl.load(state_ptr + 2 * seg + 1)  # ties to keep
    tied = key == t
    rank = tl.load(tie_prefix_ptr + c) + tl.cumsum(tied.to(tl.int32), axis=0)  # 1-based
    keep = (key > t) | (tied & (rank <= room))
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=valid)


@dataclass(frozen=True)
class _Layout:
    """Where each matrix sits in the flat key buffer, and the chunks that cover it."""

    offsets: tuple[int, ...]  # start of each matrix, then the total
    chunk_start: Tensor  # [n_chunks] int64
    chunk_end: Tensor  # [n_chunks] int64 (end of the chunk's matrix)
    chunk_seg: Tensor  # [n_chunks] int32
    seg_first_chunk: Tensor  # [n_segs] int64


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
        )
    return _LAYOUTS[cache_key]


def topk_masks(
    weights: list[Tensor], protected: list[Tensor | None], ks: list[int], chunk: int = CHUNK
) -> list[Tensor]:
    """For each matrix, the bool mask of its `k` largest |w| (protected entries first; ties: the
    lower flat index), all matrices in shared launches. 1 <= k <= numel."""
    if not weights:
        return []
    device = weights[0].device
    layout = _layout(tuple(w.numel() for w in weights), device, chunk)
    keys = torch.empty(layout.offsets[-1], dtype=torch.int32, device=device)
    for i, (w, p) in enumerate(zip(weights, protected, strict=True)):
        key = w.detach().float().abs().reshape(-1).view(torch.int32)
        if p is not None:
            key = key.masked_fill(p.reshape(-1), INF_KEY)
        keys[layout.offsets[i] : layout.offsets[i + 1]].copy_(key)
    n_segs, n_chunks = len(weights), layout.chunk_start.numel()
    k = torch.tensor(ks, dtype=torch.int32, device=device)
    state = torch.zeros(n_segs, 2, dtype=torch.int32, device=device)  # threshold, count above
    hist = torch.zeros(n_segs, 256, dtype=torch.int32, device=device)
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg)
    for hi, lo in ((30, 23), (22, 15), (14, 7), (6, 0)):  # the last digit overlaps by one bit
        _digit_histogram_kernel[(n_chunks,)](keys, *table, state, hist, HI=hi, LO=lo, CHUNK=chunk)
        _pick_digit_kernel[(n_segs,)](hist, state, k, LO=lo)
    ties = torch.empty(n_chunks, dtype=torch.int32, device=device)
    _count_ties_kernel[(n_chunks,)](keys, *table, state, ties, CHUNK=chunk)
    before = torch.cumsum(ties, 0, dtype=torch.int64) - ties  # ties in earlier chunks
    prefix = (before - before[layout.seg_first_chunk][layout.chunk_seg.long()]).to(torch.int32)
    keep = torch.empty(layout.offsets[-1], dtype=torch.uint8, device=device)
    _keep_kernel[(n_chunks,)](keys, keep, *table, state, k, prefix, CHUNK=chunk)
    keep = keep.view(torch.bool)
    return [
        keep[layout.offsets[i] : layout.offsets[i + 1]].view(w.shape) for i, w in enumerate(weights)
    ]
