"""The L0 projection's kernels (projection.py launches them)."""

from __future__ import annotations

import triton
import triton.language as tl

INF_KEY = tl.constexpr(0x7F800000)
"""Key of +inf: protected entries outrank every finite magnitude."""


_MIN_RADIUS = tl.constexpr(1 << 12)
"""Smallest half-width of a warm-start window, in keys (fp32: 2^23 keys per octave)."""


_MAX_RADIUS = tl.constexpr(1 << 26)
"""Largest half-width (8 octaves): beyond it the window would hold most keys."""


@triton.jit
def _load_chunk(
    c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK: tl.constexpr,
    count_ptr, cap_ptr, DYNAMIC: tl.constexpr, mode_ptr, WANT: tl.constexpr,
):  # fmt: skip
    """Chunk c's buffer offsets, their validity, its keys (-1 where not valid: below every real
    key) and its matrix. DYNAMIC chunks (of the candidate buffer) end where the matrix's
    candidate count says, at most at its capacity. With WANT >= 0 only a matrix whose search
    mode is WANT has valid keys: the others' chunks read no memory."""
    seg = tl.load(chunk_seg_ptr + c)
    end = tl.load(chunk_end_ptr + c)
    start = tl.load(chunk_start_ptr + c)
    if DYNAMIC:
        cap = tl.load(cap_ptr + seg)
        end = end - cap + tl.minimum(tl.load(count_ptr + seg), cap)
    if WANT >= 0:
        end = tl.where(tl.load(mode_ptr + seg) == WANT, end, start)
    offs = start + tl.arange(0, CHUNK)
    valid = offs < end
    key = tl.load(keys_ptr + offs, mask=valid, other=-1)
    return offs, valid, key, seg


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
def _protected_keys_kernel(
    w_ptr, keys_ptr, n_neurons, length, stride_neuron, stride_elem, j,
    BN: tl.constexpr, BL: tl.constexpr,
):  # fmt: skip
    """Keys of BN neurons of a contiguous matrix: each neuron's j largest |w| (ties: lower
    index along the neuron) get the key of +inf, the rest the bit pattern of |w|. A neuron is
    `length` entries `stride_elem` apart; neurons are `stride_neuron` apart (rows: cols and 1;
    columns: 1 and cols). The buffer's layout is the matrix's, so offsets serve both."""
    neuron = tl.program_id(0) * BN + tl.arange(0, BN)  # [BN]
    e = tl.arange(0, BL)  # [BL] position along the neuron
    inside = (e < length)[:, None] & (neuron < n_neurons)[None, :]
    offs = e[:, None].to(tl.int64) * stride_elem + neuron[None, :].to(tl.int64) * stride_neuron
    w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)  # [BL, BN]
    key = tl.abs(w).to(tl.int32, bitcast=True)
    live = tl.where(inside, key, -1)
    protect = live < -1  # none yet ([BL, BN] bool)
    for _ in range(j):  # the neuron's maxima one by one, lowest position first among equals
        top = tl.max(live, axis=0)  # [BN]
        first = tl.min(tl.where(live == top[None, :], e[:, None], BL), axis=0)  # [BN]
        hit = e[:, None] == first[None, :]
        protect = protect | hit
        live = tl.where(hit, -2, live)
    tl.store(keys_ptr + offs, tl.where(protect, INF_KEY, key), mask=inside)


@triton.jit
def _window_kernel(
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, seg_base_ptr, warm_ptr,
    above_ptr, cand_count_ptr, cand_base_ptr, cap_ptr, cand_keys_ptr, cand_idx_ptr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    """Warm start, one chunk: count its keys at or above the window of its matrix, and append
    the keys inside the window (with their flat index in the matrix) to its candidates."""
    c = tl.program_id(0)
    offs, valid, key, seg = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, 0, 0, False, 0, -1
    )
    prev = tl.load(warm_ptr + 2 * seg)
    if prev >= 0:  # a previous threshold exists
        radius = tl.load(warm_ptr + 2 * seg + 1)
        lo = tl.maximum(prev - radius, 0)
        hi = tl.minimum(prev.to(tl.int64) + radius, 2147483647).to(tl.int32)
        tl.atomic_add(above_ptr + seg, tl.sum((key >= hi).to(tl.int32), axis=0))
        inside = valid & (key >= lo) & (key < hi)
        n = tl.sum(inside.to(tl.int32), axis=0)
        if n > 0:
            first = tl.atomic_add(cand_count_ptr + seg, n)  # slots [first, first + n)
            slot = first + tl.cumsum(inside.to(tl.int32), axis=0) - 1
            ok = inside & (slot < tl.load(cap_ptr + seg))
            dest = tl.load(cand_base_ptr + seg) + slot
            tl.store(cand_keys_ptr + dest, key, mask=ok)
            tl.store(
                cand_idx_ptr + dest, (offs - tl.load(seg_base_ptr + seg)).to(tl.int32), mask=ok
            )


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
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, hist_ptr, mode_ptr,
    count_ptr, cap_ptr,
    HI: tl.constexpr, LO: tl.constexpr, CHUNK: tl.constexpr, FEW: tl.constexpr,
    MODE: tl.constexpr, DYNAMIC: tl.constexpr,
):  # fmt: skip
    """Chunk c's part of the histogram of the digit [LO, HI] among the keys still tied with
    its matrix's threshold prefix, for matrices searching in MODE (0: all keys, 1: the
    candidates)."""
    c = tl.program_id(0)
    _, valid, key, seg = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, count_ptr, cap_ptr,
        DYNAMIC, mode_ptr, MODE,
    )  # fmt: skip
    t = tl.load(state_ptr + 2 * seg)
    # Keys whose bits above HI equal the threshold's are still undecided; count their digit.
    match = valid & ((key >> (HI + 1)) == (t >> (HI + 1)))
    n_match = tl.sum(match.to(tl.int32), axis=0)
    if n_match > 0:
        digit = (key >> LO) & 255
        bins = tl.arange(0, 512)
        # Late passes: few keys are still tied with the threshold's prefix, so add them one by
        # one; a chunk where many are (long runs of equal keys) takes the histogram.
        few = n_match <= 32
        if not FEW:
            few = n_match < 0
        if few:
            tl.atomic_add(hist_ptr + 256 * seg + digit, 1, mask=match)
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
    keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, ties_ptr, mode_ptr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    """ties[c] = chunk c's keys equal to its matrix's threshold (0 for matrices whose ties
    are counted from their candidates: their chunks read nothing)."""
    c = tl.program_id(0)
    _, valid, key, seg = _load_chunk(c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr,
                                     CHUNK, 0, 0, False, mode_ptr, 0)  # fmt: skip
    tied = valid & (key == tl.load(state_ptr + 2 * seg))
    tl.store(ties_ptr + c, tl.sum(tied.to(tl.int32), axis=0))


@triton.jit
def _candidate_ties_kernel(
    cand_keys_ptr, cand_idx_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr,
    ties_ptr, mode_ptr, count_ptr, cap_ptr, seg_first_chunk_ptr,
    CHUNK: tl.constexpr, KEY_CHUNK: tl.constexpr,
):  # fmt: skip
    """For matrices searched on their candidates: each candidate tied with the threshold adds
    one to the tie count of the key chunk it came from."""
    c = tl.program_id(0)
    offs, valid, key, seg = _load_chunk(c, cand_keys_ptr, chunk_start_ptr, chunk_end_ptr,
                                        chunk_seg_ptr, CHUNK, count_ptr, cap_ptr, True,
                                        mode_ptr, 1)  # fmt: skip
    tied = valid & (key == tl.load(state_ptr + 2 * seg))
    idx = tl.load(cand_idx_ptr + offs, mask=tied, other=0)
    chunk = tl.load(seg_first_chunk_ptr + seg) + idx // KEY_CHUNK
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
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, 0, 0, False, 0, -1
    )
    keep = _kept(c, key, seg, tl.load(state_ptr + 2 * seg), k_ptr, state_ptr, tie_prefix_ptr)
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=valid)


@triton.jit
def _zero_dropped_kernel(
    w_ptr, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, state_ptr, k_ptr,
    tie_prefix_ptr, first_chunk, base, CHUNK: tl.constexpr,
):  # fmt: skip
    """`_keep_kernel` for one matrix, applied: zero its entries outside the kept set."""
    c = first_chunk + tl.program_id(0)
    offs, valid, key, seg = _load_chunk(
        c, keys_ptr, chunk_start_ptr, chunk_end_ptr, chunk_seg_ptr, CHUNK, 0, 0, False, 0, -1
    )
    keep = _kept(c, key, seg, tl.load(state_ptr + 2 * seg), k_ptr, state_ptr, tie_prefix_ptr)
    zero = tl.zeros((CHUNK,), dtype=w_ptr.dtype.element_ty)
    tl.store(w_ptr + (offs - base), zero, mask=valid & ~keep)
