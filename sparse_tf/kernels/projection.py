"""Weight projection on the GPU: the exact top-K of many matrices at once, by radix select (the
Triton kernels and their launchers), and the pure-torch reference that defines it.

The kept set of a matrix: its protected entries (per-neuron protection: the j largest |w| of
every row or column, ties to the lower index along the neuron) and then its largest |w| up to K
entries, ties to the lower flat (row-major) index — `reference_masks`.

On the GPU every matrix's magnitudes become int32 keys (the fp32 bit pattern of |w|, which
orders like |w|; protected entries get the key of +inf) in one flat buffer. A matrix with
per-neuron protection gets its keys from one kernel that reads each neuron once (rows in
place, columns in place too: no transposed copies), picks its j maxima and writes the
neuron's keys. The K-th largest key of every matrix is then found in shared launches:

- **Warm start.** The threshold moves little between optimizer steps, so each matrix keeps the
  previous step's threshold t' and a radius r (twice its last move, plus 2^12 keys).
  The kernels that write the keys also count, per matrix, the keys >= t' + r and copy the keys
  in [t' − r, t' + r) with their indices to a small candidate buffer (no second pass over the
  keys). If the K-th largest key is inside the window (and the candidates fit), the rest of
  the search runs on the candidates alone; otherwise that matrix falls back to the cold search
  below. The result is the same either way: the window only decides where to look.
- **Radix select.** Four passes, one per 8-bit digit from the top, count that digit among the
  keys still tied with the threshold found so far (each program adds up the histograms of its
  chunks of the buffer and adds them atomically into its matrices' histograms; in the late
  passes so few keys are still tied that they are added one by one), and a tiny kernel per
  matrix picks the digit where the count from the top reaches K. After the four passes the
  threshold is exactly the K-th largest key.
  These passes are persistent: a fixed number of programs walks the chunks of just the
  matrices that search there (all keys, or the candidates that were appended), so that a
  step where every matrix found its threshold in its window launches nothing per chunk.
- **Ties** at the threshold are ranked in index order across chunks (per-chunk counts, an
  exclusive scan), so that exactly K entries are kept: the library's rule.

`topk_masks` writes the kept sets as masks; `project_` zeroes the dropped entries in place.
Nothing waits for the host, so the whole projection can be replayed as one CUDA graph
(`sparse_tf.kernels.graphs`); the warm state lives in device tensors the graph reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sparse_tf.kernels.abstopk import SMALL_K
from sparse_tf.kernels.abstopk import mask as abs_topk_mask
from sparse_tf.kernels.grid import cdiv, next_power_of_2
from sparse_tf.kernels.rule import topk_mask
from sparse_tf.kernels.triton_support import tl, triton

CHUNK = 4096
"""Keys per program; chunks never straddle two matrices."""
_KEY_BLOCK = 2048
_CANDIDATE_SHARE = 16
"""A matrix's candidate buffer holds 1/_CANDIDATE_SHARE of its entries (at least one chunk)."""
_CHUNK_WARPS = 4
"""Warps of a program that owns a chunk (histogram, tie and zeroing passes)."""
_PASS_PROGRAMS = 1024
"""Programs of a persistent chunk pass (the digit histograms, the tie counts): about 8 per SM
of an H100 or H200. Each walks the chunks of the matrices its pass concerns (`_work`), so a
pass over the matrices that fell back to the cold search costs nothing when none did."""
_PROTECT_TILE = 4096
"""Entries per program of the protected-keys kernel (whole neurons: BL · BN). Its reductions
along a neuron cross warps; fewer neurons per program ran faster on an H100 (0.69 ms at 4096
entries, 0.85 at 16384, 1.19 at 32768 for paper-d1024)."""
_PROTECT_MAX_NEURONS = 32
_PROTECT_WARP_ENTRIES = 1024
"""Entries per warp of a protected-keys program (4 warps for the 4,096-entry tile). With the
warm start's window appends in that kernel (latency-bound: a scan, an atomic that returns,
scattered stores) more warps may pay; benchmarks/projection_kernels.py times 8 and 16: on an
H100 8 ran the same and 16 slower, though they need 122 and 62 registers a thread instead of
220 (RESULTS.md, 2026-12-07). Finding each maximum with one int64 max over (key, reversed
position), instead of an int32 max and then a min over the positions that hold it, halves the
cross-warp reductions but ran slower there (1.003 against 0.960 ms; RESULTS.md, 2026-12-07,
"the last projection variants"), and is gone."""


@dataclass(frozen=True)
class Protect:
    """Per-neuron protection of a matrix: the j largest |w| of every neuron are kept first;
    neurons are rows (dim 0) or columns (dim 1)."""

    dim: int
    j: int


Protection = Tensor | Protect | None
"""A bool mask of the protected entries, the rule that makes it, or no protection."""


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_protected(w: Tensor, protection: Protection) -> Tensor | None:
    """The bool mask of the entries of w that `protection` forces into the kept set."""
    if protection is None or isinstance(protection, Tensor):
        return protection
    neurons_last = w.detach() if protection.dim == 0 else w.detach().T  # [neurons, entries]
    mask = topk_mask(neurons_last.abs(), protection.j)
    return mask if protection.dim == 0 else mask.T


def reference_masks(
    weights: Sequence[Tensor], protections: Sequence[Protection], ks: Sequence[int] | Tensor
) -> list[Tensor]:
    """For each matrix, the bool mask of its k largest |w| after its protected entries (which
    outrank everything); ties go to the lower flat index. 1 <= k <= numel."""
    if isinstance(ks, Tensor):
        ks = ks.tolist()
    masks = []
    for w, p, k in zip(weights, protections, ks, strict=True):
        score = w.detach().abs()
        protected = reference_protected(w, p)
        if protected is not None:
            score = score.masked_fill(protected, torch.inf)
        masks.append(topk_mask(score.reshape(1, -1), k).view_as(w))
    return masks


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


INF_KEY = tl.constexpr(0x7F800000)
"""Key of +inf: protected entries outrank every finite magnitude."""


_MIN_RADIUS = tl.constexpr(1 << 12)
"""Smallest half-width of a warm-start window, in keys (fp32: 2^23 keys per octave)."""


_MAX_RADIUS = tl.constexpr(1 << 26)
"""Largest half-width (8 octaves): beyond it the window would hold most keys."""


@triton.jit
def _load_chunk(
    c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK: tl.constexpr,
    count_ptr, cap_ptr, DYNAMIC: tl.constexpr,
):  # fmt: skip
    """Chunk c's buffer offsets, their validity, its keys (-1 where not valid: below every real
    key) and its matrix. DYNAMIC chunks (of the candidate buffer) end where the matrix's
    candidate count says, at most at its capacity."""
    seg = tl.load(chunk_seg_ptr + c)
    end = tl.load(chunk_end_ptr + c)
    start = tl.load(chunk_start_ptr + c)
    if DYNAMIC:
        cap = tl.load(cap_ptr + seg)
        end = end - cap + tl.minimum(tl.load(count_ptr + seg), cap)
    offs = start + tl.arange(0, CHUNK)
    valid = offs < end
    key = tl.load(keys_ptr + offs, mask=valid, other=-1)
    return offs, valid, key, seg


@triton.jit
def _work(
    seg_first_ptr, seg_chunks_ptr, n_segs, mode_ptr, count_ptr, cap_ptr,
    SEGS: tl.constexpr, MODE: tl.constexpr, DYNAMIC: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The work list of a persistent chunk pass: the chunks of the matrices searching in MODE
    (all of a matrix's chunks; DYNAMIC: only those of its candidate buffer that hold
    candidates), matrix by matrix. Returns the matrices' ids, first chunks, chunks in the list
    and their running total [SEGS], and this program's share [begin, stop) of the list: the
    same number of consecutive positions for every program of the pass."""
    segs = tl.arange(0, SEGS)
    live = segs < n_segs
    first = tl.load(seg_first_ptr + segs, mask=live, other=0)
    if DYNAMIC:
        filled = tl.minimum(tl.load(count_ptr + segs, mask=live, other=0),
                            tl.load(cap_ptr + segs, mask=live, other=0))  # fmt: skip
        n = tl.cdiv(filled, CHUNK)
    else:
        n = tl.load(seg_chunks_ptr + segs, mask=live, other=0)
    n = tl.where(live & (tl.load(mode_ptr + segs, mask=live, other=-1) == MODE), n, 0)
    ends = tl.cumsum(n, axis=0)
    per = tl.cdiv(tl.sum(n, axis=0), tl.num_programs(0))
    begin = tl.program_id(0) * per
    return segs, first, n, ends, begin, tl.minimum(begin + per, tl.sum(n, axis=0))


@triton.jit
def _nth_chunk(i, segs, first, n, ends):
    """The chunk at position i of `_work`'s list."""
    seg = tl.sum((ends <= i).to(tl.int32), axis=0)  # the matrix whose range holds i
    here = segs == seg
    begin = tl.sum(tl.where(here, ends - n, 0), axis=0)  # the matrix's first position
    return tl.sum(tl.where(here, first, 0), axis=0) + i - begin


@triton.jit
def _load_nth(
    i, segs, first, n, ends, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr,
    CHUNK: tl.constexpr, count_ptr, cap_ptr, DYNAMIC: tl.constexpr,
):  # fmt: skip
    """`_load_chunk` of the chunk at position i of `_work`'s list."""
    c = _nth_chunk(i, segs, first, n, ends)
    return _load_chunk(c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK,
                       count_ptr, cap_ptr, DYNAMIC)  # fmt: skip


@triton.jit
def _add_counts(hist_ptr, seg, acc, bins):
    """Add the counts acc [512] (bins 256.. unused) to matrix seg's histogram (none if seg < 0)."""
    if seg >= 0:
        tl.atomic_add(hist_ptr + 256 * seg + bins, acc, mask=(bins < 256) & (acc > 0))


@triton.jit
def _window(
    key, idx, valid, seg, warm_ptr, above_ptr, cand_count_ptr, cand_base_ptr, cap_ptr,
    cand_keys_ptr, cand_idx_ptr,
):  # fmt: skip
    """Warm start, for a tile of keys [R, C] of matrix seg as they are written: count those at
    or above its window, and append those inside it (with their flat index idx in the matrix)
    to its candidates, column after column (scans along the tile's own dims: no reshape, which
    costs registers). Nothing for a matrix without a previous threshold."""
    prev = tl.load(warm_ptr + 2 * seg)
    if prev >= 0:
        radius = tl.load(warm_ptr + 2 * seg + 1)
        lo = tl.maximum(prev - radius, 0)
        hi = tl.minimum(prev.to(tl.int64) + radius, 2147483647).to(tl.int32)
        above = tl.sum(tl.sum((valid & (key >= hi)).to(tl.int32), axis=0), axis=0)
        tl.atomic_add(above_ptr + seg, above)
        inside = (valid & (key >= lo) & (key < hi)).to(tl.int32)
        per_column = tl.sum(inside, axis=0)  # [C]
        n = tl.sum(per_column, axis=0)
        if n > 0:
            first = tl.atomic_add(cand_count_ptr + seg, n)  # slots [first, first + n)
            before = tl.cumsum(per_column, axis=0) - per_column  # [C]: in earlier columns
            slot = first + before[None, :] + tl.cumsum(inside, axis=0) - 1
            ok = (inside != 0) & (slot < tl.load(cap_ptr + seg))
            dest = tl.load(cand_base_ptr + seg) + slot
            tl.store(cand_keys_ptr + dest, key, mask=ok)
            tl.store(cand_idx_ptr + dest, idx.to(tl.int32), mask=ok)


@triton.jit
def _keys_kernel(
    w_ptr, p_ptr, keys_ptr, n, cols, p_stride_r, p_stride_c,
    seg, warm_ptr, above_ptr, cand_count_ptr, cand_base_ptr, cap_ptr, cand_keys_ptr, cand_idx_ptr,
    HAS_P: tl.constexpr, BLOCK: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """One matrix's keys into its slice of the flat buffer: the fp32 bit pattern of |w|, or
    the key of +inf where the protection mask (any strides: a transposed view works) is set;
    with WINDOW, the warm start's window pass over them too (`_window`)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    w = tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    key = tl.abs(w).to(tl.int32, bitcast=True)
    if HAS_P:
        protect = tl.load(p_ptr + (offs // cols) * p_stride_r + (offs % cols) * p_stride_c,
                          mask=valid, other=0)  # fmt: skip
        key = tl.where(protect != 0, INF_KEY, key)
    tl.store(keys_ptr + offs, key, mask=valid)
    if WINDOW:
        _window(key[:, None], offs[:, None], valid[:, None], seg, warm_ptr, above_ptr,
                cand_count_ptr, cand_base_ptr, cap_ptr, cand_keys_ptr, cand_idx_ptr)  # fmt: skip


@triton.jit
def _protected_keys_kernel(
    w_ptr, keys_ptr, n_neurons, length, stride_neuron, stride_elem, j,
    seg, warm_ptr, above_ptr, cand_count_ptr, cand_base_ptr, cap_ptr, cand_keys_ptr, cand_idx_ptr,
    BN: tl.constexpr, BL: tl.constexpr, WINDOW: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """Keys of BN neurons of a contiguous matrix: each neuron's j largest |w| (ties: lower
    index along the neuron) get the key of +inf, the rest the bit pattern of |w|. A neuron is
    `length` entries `stride_elem` apart; neurons are `stride_neuron` apart (rows: cols and 1;
    columns: 1 and cols). The buffer's layout is the matrix's, so offsets serve both. WIDE
    (2^31 entries or more) takes the offsets in 64 bits. With WINDOW, the warm start's window
    pass over the keys too (`_window`). Registers decide how many programs an SM holds, so the
    tile is held as its keys alone (-1 outside the matrix, -2 where protected)."""
    neuron = tl.program_id(0) * BN + tl.arange(0, BN)  # [BN]
    e = tl.arange(0, BL)  # [BL] position along the neuron
    inside = (e < length)[:, None] & (neuron < n_neurons)[None, :]
    if WIDE:
        offs = e[:, None].to(tl.int64) * stride_elem + neuron[None, :].to(tl.int64) * stride_neuron
    else:
        offs = e[:, None] * stride_elem + neuron[None, :] * stride_neuron
    w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)  # [BL, BN]
    live = tl.where(inside, tl.abs(w).to(tl.int32, bitcast=True), -1)
    for _ in range(j):  # the neuron's maxima one by one, lowest position first among equals
        top = tl.max(live, axis=0)  # [BN]
        first = tl.min(tl.where(live == top[None, :], e[:, None], BL), axis=0)  # [BN]
        live = tl.where(e[:, None] == first[None, :], -2, live)
    key = tl.where(live == -2, INF_KEY, live)
    tl.store(keys_ptr + offs, key, mask=inside)
    if WINDOW:
        _window(key, offs, inside, seg, warm_ptr, above_ptr, cand_count_ptr, cand_base_ptr,
                cap_ptr, cand_keys_ptr, cand_idx_ptr)  # fmt: skip


@triton.jit
def _decide_kernel(warm_ptr, above_ptr, cand_count_ptr, cap_ptr, k_ptr, mode_ptr, state_ptr):
    """Per matrix: search the candidates (mode 1: the K-th largest key is inside the window and
    every candidate was kept) or fall back to all keys (mode 0)."""
    seg = tl.program_id(0)
    above = tl.load(above_ptr + seg)
    count = tl.load(cand_count_ptr + seg)
    k = tl.load(k_ptr + seg)
    ok = (tl.load(warm_ptr + 2 * seg) >= 0) & (count <= tl.load(cap_ptr + seg))
    ok = ok & (above < k) & (above + count >= k)
    tl.store(mode_ptr + seg, ok.to(tl.int32))
    tl.store(state_ptr + 2 * seg, 0)
    tl.store(state_ptr + 2 * seg + 1, tl.where(ok, above, 0))  # keys known to be above


@triton.jit
def _digit_histogram_kernel(
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, seg_first_ptr, seg_chunks_ptr,
    n_segs, state_ptr, hist_ptr, mode_ptr, count_ptr, cap_ptr,
    HI: tl.constexpr, LO: tl.constexpr, CHUNK: tl.constexpr, FEW: tl.constexpr,
    MODE: tl.constexpr, DYNAMIC: tl.constexpr, SEGS: tl.constexpr,
):  # fmt: skip
    """The histogram of the digit [LO, HI] among the keys still tied with each matrix's
    threshold prefix, for the matrices searching in MODE (0: all keys, 1: the candidates):
    a persistent pass over `_work`'s chunks, so that the chunks of the other matrices cost
    nothing. A program's chunks are consecutive, mostly of one matrix: it adds their counts
    up in registers and sends them to the matrix's histogram once per matrix, not once per
    chunk (the early passes count every key, and all chunks of a matrix hit its 256 bins)."""
    segs, first, n, ends, begin, stop = _work(
        seg_first_ptr, seg_chunks_ptr, n_segs, mode_ptr, count_ptr, cap_ptr, SEGS, MODE, DYNAMIC,
        CHUNK,
    )  # fmt: skip
    bins = tl.arange(0, 512)
    acc = tl.zeros((512,), dtype=tl.int32)  # the counts of matrix `held` so far
    held = tl.zeros((), dtype=tl.int32) - 1
    for i in range(begin, stop):
        _, valid, key, seg = _load_nth(i, segs, first, n, ends, keys_ptr, chunk_start_ptr,
                                       chunk_end_ptr, chunk_seg_ptr, CHUNK, count_ptr, cap_ptr,
                                       DYNAMIC)  # fmt: skip
        if seg != held:  # a new matrix: the last one's counts go out
            _add_counts(hist_ptr, held, acc, bins)
            acc = tl.zeros((512,), dtype=tl.int32)
            held = seg
        t = tl.load(state_ptr + 2 * seg)
        # Keys whose bits above HI equal the threshold's are undecided; count their digit.
        match = valid & ((key >> (HI + 1)) == (t >> (HI + 1)))
        n_match = tl.sum(match.to(tl.int32), axis=0)
        if n_match > 0:
            digit = (key >> LO) & 255
            # Late passes: few keys are still tied with the threshold's prefix, so add them
            # one by one; a chunk where many are (long runs of equal keys) takes the histogram.
            few = n_match <= 32
            if not FEW:
                few = n_match < 0
            if few:
                tl.atomic_add(hist_ptr + 256 * seg + digit, 1, mask=match)
            else:
                acc += tl.histogram(tl.where(match, digit, 256), 512)  # bins 256.. the others
    _add_counts(hist_ptr, held, acc, bins)


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
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, seg_first_ptr, seg_chunks_ptr,
    n_segs, state_ptr, ties_ptr, mode_ptr, CHUNK: tl.constexpr, SEGS: tl.constexpr,
):  # fmt: skip
    """ties[c] = chunk c's keys equal to its matrix's threshold, for the matrices searched on
    all keys (a persistent pass; the others' entries stay as they were: zero)."""
    segs, first, n, ends, begin, stop = _work(
        seg_first_ptr, seg_chunks_ptr, n_segs, mode_ptr, 0, 0, SEGS, 0, False, CHUNK
    )
    for i in range(begin, stop):
        c = _nth_chunk(i, segs, first, n, ends)
        _, valid, key, seg = _load_chunk(c, keys_ptr, chunk_start_ptr, chunk_end_ptr,
                                         chunk_seg_ptr, CHUNK, 0, 0, False)  # fmt: skip
        tied = valid & (key == tl.load(state_ptr + 2 * seg))
        tl.store(ties_ptr + c, tl.sum(tied.to(tl.int32), axis=0))


@triton.jit
def _candidate_ties_kernel(
    cand_keys_ptr, cand_idx_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, seg_first_ptr,
    n_segs, state_ptr, ties_ptr, mode_ptr, count_ptr, cap_ptr, seg_first_key_chunk_ptr,
    CHUNK: tl.constexpr, KEY_CHUNK: tl.constexpr, SEGS: tl.constexpr,
):  # fmt: skip
    """For matrices searched on their candidates: each candidate tied with the threshold adds
    one to the tie count of the key chunk it came from (a persistent pass over the candidate
    chunks that hold candidates)."""
    segs, first, n, ends, begin, stop = _work(
        seg_first_ptr, 0, n_segs, mode_ptr, count_ptr, cap_ptr, SEGS, 1, True, CHUNK
    )
    for i in range(begin, stop):
        offs, valid, key, seg = _load_nth(i, segs, first, n, ends, cand_keys_ptr,
                                          chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK,
                                          count_ptr, cap_ptr, True)  # fmt: skip
        tied = valid & (key == tl.load(state_ptr + 2 * seg))
        idx = tl.load(cand_idx_ptr + offs, mask=tied, other=0)
        chunk = tl.load(seg_first_key_chunk_ptr + seg) + idx // KEY_CHUNK
        tl.atomic_add(ties_ptr + chunk, 1, mask=tied)


@triton.jit
def _update_warm_kernel(warm_ptr, state_ptr):
    """The next step's window: centred on this threshold, twice its last move (and 2^12
    keys) to either side."""
    seg = tl.program_id(0)
    t = tl.load(state_ptr + 2 * seg)
    prev = tl.load(warm_ptr + 2 * seg)
    moved = tl.where(prev >= 0, tl.abs(t - prev), 1 << 15)  # first window: ±(2^16 + 2^12) keys
    radius = tl.minimum(2 * moved.to(tl.int64) + _MIN_RADIUS, _MAX_RADIUS)
    tl.store(warm_ptr + 2 * seg, t)
    tl.store(warm_ptr + 2 * seg + 1, radius.to(tl.int32))


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
    offs, valid, key, seg = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, 0, 0, False
    )
    keep = _kept(c, key, seg, tl.load(state_ptr + 2 * seg), k_ptr, state_ptr, tie_prefix_ptr)
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=valid)


@triton.jit
def _zero_dropped_kernel(
    address_ptr, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, seg_base_ptr,
    state_ptr, k_ptr, tie_prefix_ptr, CHUNK: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """`_keep_kernel` applied: zero the entries outside the kept set, one chunk per program
    over the chunks of every matrix at once, each matrix found by its data address (0: a
    matrix of another dtype, left to another launch)."""
    c = tl.program_id(0)
    seg = tl.load(chunk_seg_ptr + c)
    address = tl.load(address_ptr + seg)
    if address != 0:
        w_ptr = address.to(tl.pointer_type(DTYPE))
        offs, valid, key, seg = _load_chunk(
            c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, 0, 0, False
        )
        keep = _kept(c, key, seg, tl.load(state_ptr + 2 * seg), k_ptr, state_ptr, tie_prefix_ptr)
        zero = tl.zeros((CHUNK,), dtype=DTYPE)
        tl.store(w_ptr + (offs - tl.load(seg_base_ptr + seg)), zero, mask=valid & ~keep)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _chunks(sizes: Sequence[int], chunk: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Chunk starts, ends (of the chunk's region), regions and each region's first chunk, for
    regions of `sizes` laid out back to back."""
    starts, ends, segs, firsts, base = [], [], [], [], 0
    for seg, n in enumerate(sizes):
        firsts.append(len(starts))
        for s in range(base, base + n, chunk):
            starts.append(s)
            ends.append(base + n)
            segs.append(seg)
        base += n
    return starts, ends, segs, firsts


@dataclass(frozen=True)
class _Layout:
    """Where each matrix sits in the flat key buffer (and its candidate buffer), the chunks
    that cover both, and the warm-start state of this set of matrices."""

    offsets: tuple[int, ...]  # start of each matrix, then the total
    chunk_start: Tensor  # [n_chunks] int64
    chunk_end: Tensor  # [n_chunks] int64 (end of the chunk's matrix)
    chunk_seg: Tensor  # [n_chunks] int32
    seg_base: Tensor  # [n_segs] int64: offsets, on the device
    seg_first_chunk: Tensor  # [n_segs] int64
    seg_chunks: Tensor  # [n_segs] int32: number of chunks
    cand_capacity: Tensor  # [n_segs] int32
    cand_total: int  # sum of the capacities
    cand_base: Tensor  # [n_segs] int64
    cand_chunk_start: Tensor  # [n_cand_chunks] int64
    cand_chunk_end: Tensor  # [n_cand_chunks] int64 (end of the region at full capacity)
    cand_chunk_seg: Tensor  # [n_cand_chunks] int32
    cand_seg_first_chunk: Tensor  # [n_segs] int64
    warm: Tensor  # [n_segs, 2] int32: previous threshold (-1: none), window radius


_LAYOUTS: dict[tuple[tuple[int, ...], str, int], _Layout] = {}


def _layout(numels: tuple[int, ...], device: torch.device, chunk: int) -> _Layout:
    cache_key = (numels, str(device), chunk)
    if cache_key not in _LAYOUTS:

        def tensor(values: Sequence[int], dtype: torch.dtype) -> Tensor:
            return torch.tensor(list(values), dtype=dtype, device=device)

        starts, ends, segs, firsts = _chunks(numels, chunk)
        caps = [min(n, max(chunk, n // _CANDIDATE_SHARE)) for n in numels]
        c_starts, c_ends, c_segs, c_firsts = _chunks(caps, chunk)
        counts = [e - f for f, e in zip(firsts, [*firsts[1:], len(starts)], strict=True)]
        offsets = [0]
        for n in numels:
            offsets.append(offsets[-1] + n)
        cand_base = [sum(caps[:i]) for i in range(len(caps))]
        _LAYOUTS[cache_key] = _Layout(
            offsets=tuple(offsets),
            chunk_start=tensor(starts, torch.int64),
            chunk_end=tensor(ends, torch.int64),
            chunk_seg=tensor(segs, torch.int32),
            seg_base=tensor(offsets[:-1], torch.int64),
            seg_first_chunk=tensor(firsts, torch.int64),
            seg_chunks=tensor(counts, torch.int32),
            cand_capacity=tensor(caps, torch.int32),
            cand_total=sum(caps),
            cand_base=tensor(cand_base, torch.int64),
            cand_chunk_start=tensor(c_starts, torch.int64),
            cand_chunk_end=tensor(c_ends, torch.int64),
            cand_chunk_seg=tensor(c_segs, torch.int32),
            cand_seg_first_chunk=tensor(c_firsts, torch.int64),
            warm=tensor([-1, 0] * len(numels), torch.int32).view(-1, 2),  # no threshold yet
        )
    return _LAYOUTS[cache_key]


@dataclass(frozen=True)
class _Window:
    """The warm start's window pass, made as the keys are written: the previous thresholds and
    their radii, and what the pass fills (zeroed before the first matrix's keys)."""

    warm: Tensor  # [n_segs, 2] int32
    above: Tensor  # [n_segs] int32: keys at or above the window
    count: Tensor  # [n_segs] int32: candidates appended (may exceed the capacity)
    cand_base: Tensor  # [n_segs] int64
    cap: Tensor  # [n_segs] int32
    cand_keys: Tensor  # [cand_total] int32
    cand_idx: Tensor  # [cand_total] int32: flat index in the matrix

    def args(self, seg: int) -> tuple[object, ...]:
        return (seg, self.warm, self.above, self.count, self.cand_base, self.cap,
                self.cand_keys, self.cand_idx)  # fmt: skip


def _write_keys(w: Tensor, p: Protection, keys: Tensor, seg: int, window: _Window | None) -> None:
    """Matrix w's keys into `keys` (its slice of the flat buffer), and with `window` the
    window pass over them (w is matrix `seg` of the window's set)."""
    n, cols = w.numel(), w.shape[-1]
    # Without a window the kernels never read these: any tensor stands in for the pointers.
    window_args = window.args(seg) if window else (0, keys, keys, keys, keys, keys, keys, keys)
    if isinstance(p, Protect):
        length = w.shape[1 - p.dim] if w.dim() == 2 else 0
        if p.j > SMALL_K or p.j >= length:  # the general rule: a mask first
            p = reference_protected(w, p) if p.j >= length else _protect_mask(w, p)
        else:
            n_neurons = w.shape[p.dim]
            stride_neuron, stride_elem = (cols, 1) if p.dim == 0 else (1, cols)
            bl = max(16, next_power_of_2(length))
            bn = max(1, min(_PROTECT_MAX_NEURONS, _PROTECT_TILE // bl))
            _protected_keys_kernel[(cdiv(n_neurons, bn),)](
                w, keys, n_neurons, length, stride_neuron, stride_elem, p.j, *window_args,
                BN=bn, BL=bl, WINDOW=window is not None, WIDE=n >= 2**31,
                num_warps=max(1, min(16, bl * bn // _PROTECT_WARP_ENTRIES)),
            )  # fmt: skip
            return
    _keys_kernel[(cdiv(n, _KEY_BLOCK),)](
        w, w if p is None else p.view(torch.uint8), keys, n, cols,
        0 if p is None else p.stride(0), 0 if p is None else p.stride(1), *window_args,
        HAS_P=p is not None, BLOCK=_KEY_BLOCK, WINDOW=window is not None,
    )  # fmt: skip


def _protect_mask(w: Tensor, p: Protect) -> Tensor:
    """The protection mask by the AbsTopK mask kernel (any j < the neuron's length)."""
    neurons_last = w.detach() if p.dim == 0 else w.detach().T
    mask = abs_topk_mask(neurons_last, p.j)
    return mask if p.dim == 0 else mask.T


@dataclass(frozen=True)
class _Selection:
    """Each matrix's exact threshold, and what `_keep_kernel` / `_zero_dropped_kernel` need."""

    layout: _Layout
    keys: Tensor  # [total] int32
    state: Tensor  # [n_segs, 2] int32: threshold key, count of keys above it
    k: Tensor  # [n_segs] int32
    tie_prefix: Tensor  # [n_chunks] int32: ties at the threshold in earlier chunks of the matrix
    mode: Tensor  # [n_segs] int32: 1 where the warm start's candidates held the threshold


def _pass_grid(n_chunks: int) -> tuple[int]:
    """Programs of a persistent chunk pass over at most n_chunks chunks."""
    return (max(1, min(n_chunks, _PASS_PROGRAMS)),)


def _select(
    weights: Sequence[Tensor],
    protections: Sequence[Protection],
    ks: Sequence[int] | Tensor,
    chunk: int,
    group: dist.ProcessGroup | None = None,
) -> _Selection:
    device = weights[0].device
    layout = _layout(tuple(w.numel() for w in weights), device, chunk)
    n_segs, n_chunks = len(weights), layout.chunk_start.numel()
    segs = next_power_of_2(n_segs)
    keys = torch.empty(layout.offsets[-1], dtype=torch.int32, device=device)
    counters = torch.zeros(2, n_segs, dtype=torch.int32, device=device)  # above, candidates
    above, count = counters
    cap = layout.cand_capacity
    window = None
    if group is None and n_chunks > 0:  # sharded matrices: the cold search
        window = _Window(
            layout.warm, above, count, layout.cand_base, cap,
            torch.empty(layout.cand_total, dtype=torch.int32, device=device),
            torch.empty(layout.cand_total, dtype=torch.int32, device=device),
        )  # fmt: skip
    for i, (w, p) in enumerate(zip(weights, protections, strict=True)):
        if not w.is_contiguous():
            raise ValueError("projection: weights must be contiguous")
        if w.numel():  # an empty shard has no keys
            _write_keys(w, p, keys[layout.offsets[i] :], i, window)
    k = ks if isinstance(ks, Tensor) else torch.tensor(ks, dtype=torch.int32, device=device)
    state = torch.zeros(n_segs, 2, dtype=torch.int32, device=device)  # threshold, count above
    hist = torch.zeros(n_segs, 256, dtype=torch.int32, device=device)
    mode = torch.zeros(n_segs, dtype=torch.int32, device=device)  # 1: search the candidates
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg)
    key_work = (layout.seg_first_chunk, layout.seg_chunks, n_segs)
    cand_table = (layout.cand_chunk_start, layout.cand_chunk_end, layout.cand_chunk_seg)
    cand_work = (layout.cand_seg_first_chunk, layout.seg_chunks, n_segs)  # counts unused
    n_cand_chunks = layout.cand_chunk_start.numel()
    if window:
        _decide_kernel[(n_segs,)](layout.warm, above, count, cap, k, mode, state)
    for hi, lo in ((30, 23), (22, 15), (14, 7), (6, 0)):  # the last digit overlaps by one bit
        # After two digits (16 bits) few keys still share the threshold's prefix.
        if n_chunks:
            _digit_histogram_kernel[_pass_grid(n_chunks)](
                keys, *table, *key_work, state, hist, mode, count, cap,
                HI=hi, LO=lo, CHUNK=chunk, FEW=hi < 16, MODE=0, DYNAMIC=False, SEGS=segs,
                num_warps=_CHUNK_WARPS,
            )  # fmt: skip
        if window:
            _digit_histogram_kernel[_pass_grid(n_cand_chunks)](
                window.cand_keys, *cand_table, *cand_work, state, hist, mode, count, cap,
                HI=hi, LO=lo, CHUNK=chunk, FEW=True, MODE=1, DYNAMIC=True, SEGS=segs,
                num_warps=_CHUNK_WARPS,
            )  # fmt: skip
        if group is not None:  # row shards: the digit counts of the whole matrices
            dist.all_reduce(hist, group=group)
        _pick_digit_kernel[(n_segs,)](hist, state, k, LO=lo)
    ties = torch.zeros(n_chunks, dtype=torch.int32, device=device)
    if n_chunks:
        _count_ties_kernel[_pass_grid(n_chunks)](
            keys, *table, *key_work, state, ties, mode, CHUNK=chunk, SEGS=segs,
            num_warps=_CHUNK_WARPS,
        )  # fmt: skip
    if window:
        _candidate_ties_kernel[_pass_grid(n_cand_chunks)](
            window.cand_keys, window.cand_idx, *cand_table, layout.cand_seg_first_chunk, n_segs,
            state, ties, mode, count, cap, layout.seg_first_chunk,
            CHUNK=chunk, KEY_CHUNK=chunk, SEGS=segs, num_warps=_CHUNK_WARPS,
        )  # fmt: skip
        _update_warm_kernel[(n_segs,)](layout.warm, state)
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
    return _Selection(layout, keys, state, k, prefix.to(torch.int32), mode)


def topk_masks(
    weights: Sequence[Tensor],
    protections: Sequence[Protection],
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
    sel = _select(weights, protections, ks, chunk, group)
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
    protections: Sequence[Protection],
    ks: Sequence[int] | Tensor,
    chunk: int = CHUNK,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Zero, in place, every entry of each matrix outside the set `topk_masks` would keep.

    With `group`, each of `weights` is this rank's block of consecutive rows of a matrix split
    over the group's ranks in rank order, `protections` its part of the protection masks and
    `ks` the whole matrices' kept counts: the kept set is the whole matrix's (an all-reduce of
    the histograms per digit pass and an all-gather of the tie counts; every rank calls this)."""
    if not weights:
        return
    sel = _select(weights, protections, ks, chunk, group)
    layout = sel.layout
    n_chunks = layout.chunk_start.numel()
    if n_chunks == 0:  # every shard empty
        return
    table = (layout.chunk_start, layout.chunk_end, layout.chunk_seg, layout.seg_base)
    # One launch for all matrices of a dtype (one in all, as a rule): launched matrix by matrix,
    # the smaller ones were less than one wave of programs each.
    for dtype in dict.fromkeys(w.dtype for w in weights):
        _zero_dropped_kernel[(n_chunks,)](
            _addresses(weights, dtype), sel.keys, *table, sel.state, sel.k, sel.tie_prefix,
            CHUNK=chunk, DTYPE=getattr(tl, _TL_DTYPES[dtype]), num_warps=_CHUNK_WARPS,
        )  # fmt: skip


_TL_DTYPES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
}
"""triton.language's names of the weights' dtypes, looked up at launch (without triton, `tl` is
a stand-in that has none)."""

_ADDRESSES: dict[tuple[tuple[int, ...], torch.dtype, str], Tensor] = {}


def _addresses(weights: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """[n_segs] int64 on the weights' device: each matrix's data address where its dtype is
    `dtype`, else 0. Cached by the addresses, so that a CUDA-graph capture of `project_` finds
    the table its eager first call made (a capture may not copy from the host), and every
    replay reads it: kept for the process's life, 8 bytes per matrix of every set of matrices
    projected (as `_LAYOUTS`), never freed under a capture that reads it."""
    device = weights[0].device
    key = (tuple(w.data_ptr() for w in weights), dtype, str(device))
    if key not in _ADDRESSES:
        values = [w.data_ptr() if w.dtype == dtype else 0 for w in weights]
        _ADDRESSES[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return _ADDRESSES[key]
