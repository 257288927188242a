"""AbsTopK's forward and backward kernels and their helpers (abstopk.py launches them)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _count_ge(key, c):
    """#keys >= c, for keys in [-1, 2^31) and c >= 0: the sign bit of (c - 1) - key, summed
    (a subtract and a shift per key: the cheapest count, and the kernel is ALU-bound)."""
    ge = ((c - 1) - key).to(tl.uint32, bitcast=True) >> 31
    return tl.sum(ge.to(tl.int32), axis=0)


@triton.jit
def _pack_pairs(key):
    """bf16 keys [n] (15 bits; padding -1) as [n / 2] uint32 words of two 16-bit lanes: entry
    2i in the low lane, 2i + 1 in the high one, padding as 0 (below every c >= 1 counted)."""
    lo, hi = tl.split(tl.reshape(tl.maximum(key, 0), (key.shape[0] // 2, 2)))
    return (lo | (hi << 16)).to(tl.uint32, bitcast=True)


@triton.jit
def _count_ge_pairs(pairs, c, n):
    """#keys >= c, 1 <= c <= 2^15, among the n keys (padding included) that `_pack_pairs`
    packed: two keys per subtraction. Each lane computes 2^15 + (c - 1) - key, which lies in
    [1, 2^16) (no borrow crosses into the other lane) and has bit 15 set exactly when key < c;
    the lanes' counts add up in the word's two halves (at most n / 2 each)."""
    m = ((c - 1) | 0x8000).to(tl.uint32)
    below = (((m | (m << 16)) - pairs) >> 15) & 0x10001  # bit 0: low lane, bit 16: high lane
    s = tl.sum(below, axis=0)
    return n - ((s & 0xFFFF) + (s >> 16)).to(tl.int32)


@triton.jit
def _bits_threshold(key, k, LOW_BIT: tl.constexpr):
    """(t, #keys > t) for t = the exact k-th largest key, one bit per pass from the top.
    Invariant: at least k keys are >= t. bf16 keys (15 bits) are counted two per 32-bit
    subtraction (`_count_ge_pairs`): the kernel is ALU-bound, and a pass costs half the
    operations per key."""
    t = tl.zeros((), dtype=tl.int32)
    if LOW_BIT == 16:
        pairs = _pack_pairs(key)
        for b in tl.static_range(15):
            c = t | (1 << (14 - b))
            n = _count_ge_pairs(pairs, c, key.shape[0])
            t = tl.where(n >= k, c, t)
        return t, _count_ge_pairs(pairs, t + 1, key.shape[0])
    for b in tl.static_range(31 - LOW_BIT):
        c = t | (1 << (30 - LOW_BIT - b))
        n = _count_ge(key, c)
        t = tl.where(n >= k, c, t)
    return t, _count_ge(key, t + 1)


@triton.jit
def _guided_threshold(key, ax_sum, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, PEEL: tl.constexpr):
    """(t, #keys > t) for t = the exact k-th largest key: a bracketed search probing where the
    counts point (module docstring). Keys are in [-1, TOP]; padding is -1."""
    TOP: tl.constexpr = 0x7F800000 >> LOW_BIT  # the key of +inf: above every finite |x|
    DOUBLE: tl.constexpr = 1 << (23 - LOW_BIT)  # adding this to a key doubles the value
    lo = tl.zeros((), dtype=tl.int32)
    c_lo = n_cols + tl.zeros((), dtype=tl.int32)  # every real key is >= 0
    hi = TOP + 1 + tl.zeros((), dtype=tl.int32)
    c_hi = tl.zeros((), dtype=tl.int32)
    mean = ax_sum / n_cols
    guess = ((mean * log_ratio).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)
    peels = tl.zeros((), dtype=tl.int32)
    while hi - lo > 1:
        if (c_lo - c_hi <= PEEL) & (peels < 2):
            # Few entries left in [lo, hi): the largest below hi is t if enough are >= it.
            top = tl.max(tl.where(key < hi, key, -1), axis=0)
            c = _count_ge(key, top)
            peels += 1
            if c >= k:
                lo = top
                c_lo = c
                hi = top + 1
            else:
                hi = top
                c_hi = c
            guess = lo + (hi - lo) // 2
        else:
            probe = tl.minimum(tl.maximum(guess, lo + 1), hi - 1)
            c = _count_ge(key, probe)
            span = hi - lo
            if c >= k:
                lo = probe
                c_lo = c
            else:
                hi = probe
                c_hi = c
            if hi > TOP:  # nothing counted below k yet: double the value
                guess = lo + DOUBLE
            elif hi - lo > span // 2:  # the probe did not halve the bracket: bisect
                guess = lo + (hi - lo) // 2
            else:  # where the line through the bracket's counts crosses k - 1/2
                frac = (c_lo - k + 0.5) / (c_lo - c_hi).to(tl.float32)
                guess = lo + (frac * (hi - lo).to(tl.float32)).to(tl.int32)
    return lo, c_hi


@triton.jit
def _keep_of(key, ax_sum, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, GUIDED: tl.constexpr,
             PEEL: tl.constexpr):  # fmt: skip
    """The kept set of a row of keys: those above the k-th largest, then its ties by index."""
    if GUIDED:
        t, n_above = _guided_threshold(key, ax_sum, n_cols, k, log_ratio, LOW_BIT, PEEL)
    else:
        t, n_above = _bits_threshold(key, k, LOW_BIT)
    tied = key == t
    rank = tl.cumsum(tied.to(tl.int32), axis=0)  # 1-based rank among the ties, by index
    return (key > t) | (tied & (rank <= k - n_above))


@triton.jit
def _select(x, key, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, GUIDED: tl.constexpr,
            PEEL: tl.constexpr):  # fmt: skip
    """The kept set of a row x [BLOCK] (fp32) and its keys, by the search GUIDED selects."""
    ax_sum = 0.0
    if GUIDED:
        ax_sum = tl.sum(tl.abs(x), axis=0)
    return _keep_of(key, ax_sum, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)


@triton.jit
def _store_bits(dest_ptr, keep, n_cols, BLOCK: tl.constexpr):
    """Store a row's kept set [BLOCK] as ceil(n_cols / 32) int32 words at dest_ptr: bit i % 32
    of word i // 32 is entry i."""
    WORDS: tl.constexpr = BLOCK // 32
    bit = keep.to(tl.int32) << (tl.arange(0, BLOCK) % 32)
    words = tl.sum(tl.reshape(bit, (WORDS, 32)), axis=1)  # [WORDS]: distinct bits, sum = OR
    w = tl.arange(0, WORDS)
    tl.store(dest_ptr + w, words, mask=w < tl.cdiv(n_cols, 32))


@triton.jit
def _load_keep(src_ptr, n_cols, BLOCK: tl.constexpr):
    """A row's kept set [BLOCK] (False past n_cols) from the words `_store_bits` wrote."""
    WORDS: tl.constexpr = BLOCK // 32
    w = tl.arange(0, WORDS)
    words = tl.load(src_ptr + w, mask=w < tl.cdiv(n_cols, 32), other=0)
    bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1  # [WORDS, 32]
    return tl.reshape(bits, (BLOCK,)) != 0


@triton.jit
def _abstopk_fwd_kernel(
    x_ptr, y0_ptr, y1_ptr, y2_ptr, bits_ptr, r_ptr, n_rows, n_cols, k, log_ratio,
    stride_x, stride_y, stride_r,
    BLOCK: tl.constexpr, LOW_BIT: tl.constexpr, PARTS: tl.constexpr, STORE_MASK: tl.constexpr,
    SMALL: tl.constexpr, GUIDED: tl.constexpr, PEEL: tl.constexpr, RESIDUAL: tl.constexpr,
    GELU: tl.constexpr,
):  # fmt: skip
    """Program (row, part): AbsTopK of x[row, part·n : (part+1)·n] (of GELU(x) when GELU)
    into y_part[row] (plus the row of r when RESIDUAL; the kept set as uint8 into y0 when
    STORE_MASK), and the kept set's bit words into bits."""
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    # Upcast right after the load: exact for bf16/fp16, and the interpreter needs it.
    x = tl.load(x_ptr + row * stride_x + part * n_cols + offs, mask=in_row, other=0.0)
    x = x.to(tl.float32)
    if GELU:
        # torch's GELU (approximate="none"): x · 0.5 · (1 + erf(x · √½)) in fp32, in that
        # order, rounded to x's dtype as F.gelu returns it (gelu_abstopk.py: how close).
        x = (x * 0.5) * (1.0 + tl.math.erf(x * 0.7071067811865476))
        x = x.to(x_ptr.dtype.element_ty).to(tl.float32)
    key = (tl.abs(x).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)  # orders like |x|
    key = tl.where(in_row, key, -1)  # padding is below every real key
    if SMALL:
        # k rounds of (largest key, its lowest index): 2 reductions each, the tie rule built in.
        keep = offs < 0
        live = key
        for _ in range(k):
            top = tl.max(live, axis=0)
            first = tl.min(tl.where(live == top, offs, BLOCK), axis=0)
            keep = keep | (offs == first)
            live = tl.where(offs == first, -2, live)
    else:
        keep = _select(x, key, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)
    if STORE_MASK:
        tl.store(y0_ptr + row * stride_y + offs, keep.to(tl.uint8), mask=in_row)
    else:
        y_ptr = y0_ptr
        if PARTS > 1:
            if part == 1:
                y_ptr = y1_ptr
            if part == 2:
                y_ptr = y2_ptr
        y = tl.where(keep, x, 0.0)
        if RESIDUAL:  # the residual write: r + AbsTopK(x), as torch adds them (in fp32)
            y += tl.load(r_ptr + row * stride_r + offs, mask=in_row, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + offs, y.to(y0_ptr.dtype.element_ty), mask=in_row)
        _store_bits(bits_ptr + (part * n_rows + row) * tl.cdiv(n_cols, 32), keep, n_cols, BLOCK)


@triton.jit
def _abstopk_bwd_kernel(
    bits_ptr, g0_ptr, g1_ptr, g2_ptr, gx_ptr, n_rows, n_cols,
    stride_g0, stride_g1, stride_g2, stride_gx,
    BLOCK: tl.constexpr, PARTS: tl.constexpr,
):  # fmt: skip
    """Program (row, part): gx[row, part·n : (part+1)·n] = g_part[row] on the kept entries."""
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    g_ptr = g0_ptr + row * stride_g0
    if PARTS > 1:
        if part == 1:
            g_ptr = g1_ptr + row * stride_g1
        if part == 2:
            g_ptr = g2_ptr + row * stride_g2
    keep = _load_keep(bits_ptr + (part * n_rows + row) * tl.cdiv(n_cols, 32), n_cols, BLOCK)
    g = tl.load(g_ptr + offs, mask=in_row, other=0.0)
    gx = tl.where(keep, g, 0.0)
    dest = gx_ptr + row * stride_gx + part * n_cols + offs
    tl.store(dest, gx.to(gx_ptr.dtype.element_ty), mask=in_row)
