"""AbsTopK: keep the k largest |x| of every row. The pure-torch reference that defines it, the
Triton kernels, their launchers and their autograd Function.

Forward: each program owns one row (≤ MAX_WIDTH values, held in registers) and finds the k-th
largest magnitude exactly, as an integer: for non-negative floats the IEEE-754 bit pattern,
read as an integer, orders like the value (the "key"; bf16 and fp16 keys are shifted right by
the bits their exact upcast leaves zero, so consecutive keys are consecutive representable
values). Entries above the threshold are kept, then the tied entries in index order until k
are kept: the library's rule (`rule.topk_mask`). The ties are ranked from the row's tie bits
packed 32 to a word (popcounts, a prefix sum over the words, a bisection within the word that
holds the last kept tie: `_kept_words`), which holds nothing row-sized in registers but x and
the keys. For k <= SMALL_K (the projection's per-neuron protection, k = 4) the maxima are
picked one by one instead.

Two exact searches for the threshold key t, selected per call:

- `bits` decides one bit per pass from the top: 15 passes in bf16, 18 in fp16, 31 in fp32.
  Every pass is one count over the row.
- `guided` (rows of GUIDED_FROM_WIDTH or more) keeps a bracket lo <= t < hi with the counts
  C(lo) >= k > C(hi) (C(c) = #keys >= c) and probes where the counts say t should be: first
  at the key of ln(n/k) · mean|x| (the k/n quantile of an exponential tail), then by
  interpolating the counts linearly between the bracket's ends in key space (nearly log-value
  space), falling back to the bracket's midpoint whenever a probe failed to halve it; once the
  bracket holds at most PEEL entries it takes the largest key below hi (a max and a count).
  The result is the same exact t in ~6-12 counts instead of 15 on bf16 rows, ~12-19 instead
  of 31 on fp32 (simulated on normal, Laplace, t3, GELU and sparse-sum rows), for scalar
  steps between the counts that the bit search does not have.

Where the time goes (`benchmarks/abstopk_ablation.py`, H100, 1,024-wide bf16 rows): the
guided search is about a fifth of the forward, the tie ranks about 12%, loading and storing
the rest; one warp per 1,024-wide row reaches 75-87% of a copy's bandwidth with no search at
all. The ranks from bit words made the 4,096-wide forward 7% faster than a prefix sum over
the row and the step's AbsTopK forwards 6% faster (benchmarks/RESULTS.md, "the ties ranked
from bit words"); in a one-part 1,024-wide kernel alone they were 2-4% slower.

The forward also writes the kept set as a bit mask (one int32 word per 32 entries) for the
backward: gx = gy on the kept entries, 0 elsewhere. Saving 1 bit per entry instead of the
output lets the consumer's own saved tensors be the only full-size copy (AbsTopK adds 1/16 of a
bf16 activation to the saved memory) and makes the backward read 1 tensor instead of 2.

`parts` > 1 selects AbsTopK independently on `parts` equal slices of the last dim in one launch
(q, k and v of the fused qkv product): the outputs are separate tensors, and the backward
takes their gradients separately and writes the gradient of the whole input in one pass (no
concatenation).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sparse_tf.kernels.grid import cdiv, next_power_of_2
from sparse_tf.kernels.rule import topk_mask
from sparse_tf.kernels.triton_support import tl, triton

MAX_WIDTH = 16384
"""Widest row a program holds in registers; wider rows use the reference path."""
SMALL_K = 8
"""Up to this k, the forward picks maxima one by one (2 reductions each) instead of searching:
the per-neuron protection of the projection has k = 4."""
PEEL = 4
"""The guided search takes the largest key below the bracket once at most this many entries
are left in it."""
_LOW_BIT = {torch.float32: 0, torch.bfloat16: 16, torch.float16: 13}
"""Low bits of |x|'s fp32 bit pattern that are always 0 after the exact upcast of each dtype
(bf16 keeps 8 significant bits of fp32's 24, fp16 11)."""
SUPPORTED_DTYPES = tuple(_LOW_BIT)
Search = Literal["guided", "bits"]
GUIDED_FROM_WIDTH = 1024
"""Rows at least this wide use the guided search, narrower ones the bit search. On an H100
(benchmarks/RESULTS.md, "the AbsTopK forward taken apart"; 16k rows of heavy-tailed values,
k = n / 4) guided was 8% faster than bits at 1024 bf16, 10% at 1024 fp32 and 27% at 4096
bf16, and on normal rows (with the ties ranked from bit words) 13% faster at 1024 and 24% at
4096 bf16; in a whole step the two searches have not been timed against each other."""
PAIRED_FROM_WIDTH = tl.constexpr(2048)
"""The guided search counts bf16 keys two per subtraction (as the bit search always does) in
rows at least this wide. In the one-part kernel (benchmarks/RESULTS.md) that was 9% faster at
4096 and 4% slower at 1024 while the ties were ranked by a prefix sum over the row, and 2-4%
slower at 4096 with the ranks from bit words; in the step (paper-d1024, H100) the AbsTopK
forwards took 3.95 ms with pairs from 2048 and 3.97 without them at 4096: kept."""


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def reference_forward(x: Tensor, k: int) -> Tensor:
    """y [..., n]: x where |x| is among the k largest of its row (ties: lower index), else 0."""
    return x.masked_fill(~topk_mask(x.abs(), k), 0.0)


def reference_kept(y: Tensor, k: int) -> Tensor:
    """The kept set of an AbsTopK output y, recovered from y alone.

    Every nonzero of y was kept. A row with fewer than k nonzeros kept some zeros too: when the
    k-th largest |x| is 0, all nonzeros are kept and the lowest-index zeros fill the rest — so
    they are exactly the first k − nnz zeros of y's row.
    """
    nonzero = y != 0
    zero = ~nonzero
    room = k - nonzero.sum(dim=-1, keepdim=True)  # [..., 1]
    return nonzero | (zero & (zero.cumsum(dim=-1) <= room))


def reference_backward(y: Tensor, grad_y: Tensor, k: int) -> Tensor:
    """Gradient of AbsTopK: grad_y on the kept entries (recovered from y), 0 elsewhere."""
    return grad_y.masked_fill(~reference_kept(y, k), 0.0)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


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
def _count_keys(key, pairs, c, n_cols, PAIRED: tl.constexpr):
    """#keys >= c, 0 <= c <= 2^15 when PAIRED (bf16 keys, counted from `_pack_pairs`'s words,
    where c = 0 counts every real key), else any c >= 0."""
    if PAIRED:
        return tl.where(c > 0, _count_ge_pairs(pairs, tl.maximum(c, 1), key.shape[0]), n_cols)
    else:
        return _count_ge(key, c)


@triton.jit
def _guided_threshold(key, ax_sum, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, PEEL: tl.constexpr,
                      PAIRED: tl.constexpr):  # fmt: skip
    """(t, #keys > t) for t = the exact k-th largest key: a bracketed search probing where the
    counts point (module docstring). Keys are in [-1, TOP]; padding is -1. PAIRED (bf16 keys
    only) counts them two per subtraction, as `_bits_threshold` does (every probe is in
    [0, TOP + 1])."""
    TOP: tl.constexpr = 0x7F800000 >> LOW_BIT  # the key of +inf: above every finite |x|
    DOUBLE: tl.constexpr = 1 << (23 - LOW_BIT)  # adding this to a key doubles the value
    pairs = _pack_pairs(key) if PAIRED else key
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
            c = _count_keys(key, pairs, top, n_cols, PAIRED)
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
            c = _count_keys(key, pairs, probe, n_cols, PAIRED)
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
def _pack(flags):
    """A row's flags [BLOCK] as [BLOCK / 32] int32 words: bit i % 32 of word i // 32 is entry i."""
    BLOCK: tl.constexpr = flags.shape[0]
    bit = flags.to(tl.int32) << (tl.arange(0, BLOCK) % 32)
    return tl.sum(tl.reshape(bit, (BLOCK // 32, 32)), axis=1)  # distinct bits: the sum is an OR


@triton.jit
def _unpack(words, BLOCK: tl.constexpr):
    """The flags [BLOCK] of `_pack`'s words."""
    bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1  # [BLOCK / 32, 32]
    return tl.reshape(bits, (BLOCK,)) != 0


@triton.jit
def _popcount(w):
    """Set bits of each uint32 word, as int32 (the SWAR sum: pairs, nibbles, bytes)."""
    w = w - ((w >> 1) & 0x55555555)
    w = (w & 0x33333333) + ((w >> 2) & 0x33333333)
    w = (w + (w >> 4)) & 0x0F0F0F0F
    return ((w * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _low_bits(n):
    """uint32 words with their n lowest bits set, 0 <= n <= 32."""
    one = tl.full(n.shape, 1, dtype=tl.uint32)
    return tl.where(n >= 32, 0xFFFFFFFF, (one << tl.minimum(n, 31).to(tl.uint32)) - 1)


@triton.jit
def _tie_cut(tied, m):
    """The index just past the m-th tied entry of a row (1 <= m <= #ties; 0 for m <= 0), from
    the ties as `_pack`'s words [WORDS]: the kept ties are exactly the ties before it. The word
    that holds the m-th tie is found from the words' popcounts and their prefix sum, the bit
    within it by bisecting on the popcount of its low bits: work on BLOCK / 32 words where a
    prefix sum over the row held a rank per entry in registers."""
    WORDS: tl.constexpr = tied.shape[0]
    words = tied.to(tl.uint32, bitcast=True)
    count = _popcount(words)
    need = m - (tl.cumsum(count, axis=0) - count)  # ties still wanted where each word begins
    here = (need > 0) & (need <= count)  # the word that holds the m-th tie (none if m <= 0)
    # The smallest p with popcount(bits below p) >= need lies in (lo, hi]: 5 halvings of 32.
    lo = tl.zeros((WORDS,), dtype=tl.int32)
    hi = tl.full((WORDS,), 32, dtype=tl.int32)
    for _ in tl.static_range(5):
        mid = (lo + hi) // 2
        enough = _popcount(words & _low_bits(mid)) >= need
        hi = tl.where(enough, mid, hi)
        lo = tl.where(enough, lo, mid)
    return tl.sum(tl.where(here, tl.arange(0, WORDS) * 32 + hi, 0), axis=0)


@triton.jit
def _kept_words(key, t, n_above, k):
    """The kept set of a row of keys as `_pack`'s words: the keys above t, then the first
    k - n_above of its ties by index. Built from words, not from a rank per entry, so that
    nothing row-sized but x and the keys is held while the ties are ranked (with a prefix sum
    over the row, the q/k/v forward took 145 registers per thread instead of 117)."""
    WORDS: tl.constexpr = key.shape[0] // 32
    tied = _pack(key == t)
    cut = _tie_cut(tied, k - n_above)
    below = _low_bits(tl.minimum(tl.maximum(cut - tl.arange(0, WORDS) * 32, 0), 32))
    return _pack(key > t) | (tied & below.to(tl.int32, bitcast=True))


@triton.jit
def _keep_of(key, ax_sum, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, GUIDED: tl.constexpr,
             PEEL: tl.constexpr):  # fmt: skip
    """The kept set of a row of keys as `_pack`'s words: those above the k-th largest, then
    its ties by index."""
    if GUIDED:
        PAIRED: tl.constexpr = (LOW_BIT == 16) and (key.shape[0] >= PAIRED_FROM_WIDTH)
        t, n_above = _guided_threshold(key, ax_sum, n_cols, k, log_ratio, LOW_BIT, PEEL, PAIRED)
    else:
        t, n_above = _bits_threshold(key, k, LOW_BIT)
    return _kept_words(key, t, n_above, k)


@triton.jit
def _select(x, key, n_cols, k, log_ratio, LOW_BIT: tl.constexpr, GUIDED: tl.constexpr,
            PEEL: tl.constexpr):  # fmt: skip
    """The kept set of a row x [BLOCK] (fp32) and its keys as `_pack`'s words, by the search
    GUIDED selects."""
    ax_sum = 0.0
    if GUIDED:
        ax_sum = tl.sum(tl.abs(x), axis=0)
    return _keep_of(key, ax_sum, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)


@triton.jit
def _store_words(dest_ptr, words, n_cols):
    """Store a row's `_pack`ed kept set: ceil(n_cols / 32) int32 words at dest_ptr."""
    w = tl.arange(0, words.shape[0])
    tl.store(dest_ptr + w, words, mask=w < tl.cdiv(n_cols, 32))


@triton.jit
def _load_keep(src_ptr, n_cols, BLOCK: tl.constexpr):
    """A row's kept set [BLOCK] (False past n_cols) from the words `_store_words` wrote."""
    w = tl.arange(0, BLOCK // 32)
    return _unpack(tl.load(src_ptr + w, mask=w < tl.cdiv(n_cols, 32), other=0), BLOCK)


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
        words = _pack(keep)
    else:
        words = _select(x, key, n_cols, k, log_ratio, LOW_BIT, GUIDED, PEEL)
        keep = _unpack(words, BLOCK)
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
        _store_words(bits_ptr + (part * n_rows + row) * tl.cdiv(n_cols, 32), words, n_cols)


@triton.jit
def _column_sums_store(gb_ptr, acc, block, part, n_cols, offs, PARTS: tl.constexpr):
    """Store a program's fp32 column sums [BLOCK] as row (block, part) of the partials
    [row blocks, PARTS, n_cols] that `bias_grad` adds up."""
    dest = gb_ptr + (block.to(tl.int64) * PARTS + part) * n_cols + offs
    tl.store(dest, acc, mask=offs < n_cols)


@triton.jit
def _abstopk_bwd_kernel(
    bits_ptr, g0_ptr, g1_ptr, g2_ptr, gx_ptr, gb_ptr, n_rows, n_cols,
    stride_g0, stride_g1, stride_g2, stride_gx,
    BLOCK: tl.constexpr, PARTS: tl.constexpr, ROWS: tl.constexpr, BIAS: tl.constexpr,
):  # fmt: skip
    """Program (row block, part): gx[row, part·n : (part+1)·n] = g_part[row] on the kept
    entries, for ROWS consecutive rows; with BIAS also the column sums of those gx rows (as
    written, in fp32) into the partials at gb (`_column_sums_store`)."""
    block = tl.program_id(0)
    part = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    g_ptr = g0_ptr
    stride_g = stride_g0
    if PARTS > 1:
        if part == 1:
            g_ptr = g1_ptr
            stride_g = stride_g1
        if part == 2:
            g_ptr = g2_ptr
            stride_g = stride_g2
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = block.to(tl.int64) * ROWS + i
        live = in_row & (row < n_rows)
        keep = _load_keep(bits_ptr + (part * n_rows + row) * tl.cdiv(n_cols, 32), n_cols, BLOCK)
        g = tl.load(g_ptr + row * stride_g + offs, mask=live & keep, other=0.0)
        gx = g.to(gx_ptr.dtype.element_ty)
        tl.store(gx_ptr + row * stride_gx + part * n_cols + offs, gx, mask=live)
        if BIAS:
            acc += gx.to(tl.float32)
    if BIAS:
        _column_sums_store(gb_ptr, acc, block, part, n_cols, offs, PARTS)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def default_search(width: int) -> Search:
    """The faster exact search for rows of `width` (GUIDED_FROM_WIDTH)."""
    return "guided" if width >= GUIDED_FROM_WIDTH else "bits"


def launch_config(width: int, per_thread: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of `width`, the whole row in one program's registers with
    about `per_thread` values per thread (BLOCK >= 32: one mask word at least)."""
    block = max(32, next_power_of_2(width))
    num_warps = max(1, min(16, block // (32 * per_thread)))
    return block, num_warps


def as_rows(t: Tensor) -> Tensor:
    """t as [rows, width] with unit stride along the width (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def forward(
    x: Tensor,
    k: int,
    parts: int = 1,
    search: Search | None = None,
    residual: Tensor | None = None,
    gelu: bool = False,
) -> tuple[list[Tensor], Tensor]:
    """AbsTopK of each of `parts` equal slices of x's last dim: (outputs, each x's shape with
    the last dim divided by `parts`; kept-set bits int32 [parts, rows, ceil(width / 32)]).
    With `residual` (x's shape, parts = 1) the output is residual + AbsTopK(x), in the dtype
    torch's addition gives. With `gelu` the selection is of GELU(x), computed in the same pass
    (the MLP's hidden neurons: no GELU output written and read back)."""
    x2 = as_rows(x)
    rows, width = x2.shape[0], x.shape[-1] // parts
    dtype = x.dtype if residual is None else torch.promote_types(residual.dtype, x.dtype)
    ys = [torch.empty(rows, width, dtype=dtype, device=x.device) for _ in range(parts)]
    bits = torch.empty(parts, rows, cdiv(width, 32), dtype=torch.int32, device=x.device)
    r2 = x2 if residual is None else as_rows(residual)
    if rows:
        block, num_warps = launch_config(width, 32)
        y1, y2 = ys[min(1, parts - 1)], ys[min(2, parts - 1)]
        _abstopk_fwd_kernel[(rows, parts)](
            x2, ys[0], y1, y2, bits, r2, rows, width, k, math.log(width / k), x2.stride(0),
            width, r2.stride(0),
            BLOCK=block, LOW_BIT=_LOW_BIT[x.dtype], PARTS=parts, STORE_MASK=False,
            SMALL=k <= SMALL_K, GUIDED=(search or default_search(width)) == "guided",
            PEEL=PEEL, RESIDUAL=residual is not None, GELU=gelu, num_warps=num_warps,
        )  # fmt: skip
    shape = (*x.shape[:-1], width)
    return [y.view(shape) for y in ys], bits


def mask(x: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest |x| of each row (ties: lower index), 1 <= k < width: the
    forward's selection, e.g. for the per-neuron protection of the weight projection."""
    width = x.shape[-1]
    x2 = as_rows(x)
    out = torch.empty(x2.shape, dtype=torch.uint8, device=x.device)
    if x2.shape[0]:
        block, num_warps = launch_config(width, 32)
        _abstopk_fwd_kernel[(x2.shape[0], 1)](
            x2, out, out, out, out, x2, x2.shape[0], width, k, math.log(width / k), x2.stride(0),
            out.stride(0), 0, BLOCK=block, LOW_BIT=_LOW_BIT[x.dtype], PARTS=1, STORE_MASK=True,
            SMALL=k <= SMALL_K, GUIDED=default_search(width) == "guided", PEEL=PEEL, RESIDUAL=False,
            GELU=False, num_warps=num_warps,
        )  # fmt: skip
    return out.view(x.shape).view(torch.bool)


BIAS_ROWS = 16
"""Rows per program of a backward that also sums its gradient's columns (`bias_grad`): each
program adds its rows in registers and writes one row of fp32 partials (1/8 of the bf16
gradient's bytes), which one small reduction then adds up in a fixed order (deterministic).
Not more rows: the programs must stay numerous enough to keep the memory system busy."""


def bias_rows(want_bias: bool) -> int:
    """Rows per backward program: one, or BIAS_ROWS where the columns are summed too."""
    return BIAS_ROWS if want_bias else 1


def backward_config(width: int, want_bias: bool) -> tuple[int, int]:
    """(BLOCK, num_warps) of a backward program: 16 values per thread, or 4 where a program
    loops over BIAS_ROWS rows (fewer programs, so more warps each)."""
    return launch_config(width, 4 if want_bias else 16)


def bias_partials(out: Tensor, width: int, want_bias: bool, parts: int = 1) -> Tensor:
    """The fp32 partials [row blocks, parts, width] that a backward with `want_bias` writes
    (every program stores its whole row, so none is initialised). Without `want_bias` the
    kernel never touches its partials argument: `out` (the gradient [rows, ...] it writes)
    stands in, so that the hot path allocates nothing for it."""
    if not want_bias:
        return out
    blocks = cdiv(out.shape[0], BIAS_ROWS)
    return torch.empty(blocks, parts, width, dtype=torch.float32, device=out.device)


def bias_grad(partials: Tensor) -> Tensor:
    """The column sums [parts · width] (fp32) from a backward's partials."""
    return partials.sum(dim=0).reshape(-1)


def as_bias_grad(gb: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """A backward's column sums in the bias's dtype, or None where no bias was handed in."""
    return None if gb is None or dtype is None else gb.to(dtype)


def backward(
    bits: Tensor,
    grads: list[Tensor],
    x_shape: torch.Size,
    dtype: torch.dtype | None = None,
    want_bias: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The gradient [x_shape] of AbsTopK's input (in `dtype`, default the gradients') from its
    outputs' gradients and kept bits; with `want_bias`, also its column sums [x_shape[-1]] in
    fp32: the gradient of a bias that the product which made x added (`bias_sink`)."""
    parts, rows, _ = bits.shape
    width = x_shape[-1] // parts
    dtype = dtype or grads[0].dtype
    g2 = [as_rows(g.to(grads[0].dtype)) for g in grads]
    gx = torch.empty(rows, width * parts, dtype=dtype, device=bits.device)
    per_program = bias_rows(want_bias)
    partials = bias_partials(gx, width, want_bias, parts)
    if rows:
        block, num_warps = backward_config(width, want_bias)
        g1, gg = g2[min(1, parts - 1)], g2[min(2, parts - 1)]
        _abstopk_bwd_kernel[(cdiv(rows, per_program), parts)](
            bits, g2[0], g1, gg, gx, partials, rows, width,
            g2[0].stride(0), g1.stride(0), gg.stride(0), gx.stride(0),
            BLOCK=block, PARTS=parts, ROWS=per_program, BIAS=want_bias, num_warps=num_warps,
        )  # fmt: skip
    return gx.view(x_shape), bias_grad(partials) if want_bias else None


# ---------------------------------------------------------------------------------------------
# Under torch.compile: the kernels as opaque operators
# ---------------------------------------------------------------------------------------------
# Traced into a compiled graph, Inductor would recompile the kernels itself (and fails to);
# as custom operators they stay calls to the launchers above, with no graph break. Eagerly
# the launchers are called directly: the operator dispatch costs host time on every call.


@torch.library.custom_op("sparse_tf::abstopk_forward", mutates_args=())
def _forward_op(x: Tensor, k: int, parts: int, residual: Tensor | None, gelu: bool) -> list[Tensor]:
    ys, bits = forward(x, k, parts, residual=residual, gelu=gelu)
    return [*ys, bits]


@_forward_op.register_fake
def _(x: Tensor, k: int, parts: int, residual: Tensor | None, gelu: bool) -> list[Tensor]:
    width = x.shape[-1] // parts
    dtype = x.dtype if residual is None else torch.promote_types(residual.dtype, x.dtype)
    ys = [x.new_empty((*x.shape[:-1], width), dtype=dtype) for _ in range(parts)]
    rows = x.numel() // max(1, x.shape[-1])
    return [*ys, x.new_empty((parts, rows, (width + 31) // 32), dtype=torch.int32)]


@torch.library.custom_op("sparse_tf::abstopk_backward", mutates_args=())
def _backward_op(
    bits: Tensor, grads: list[Tensor], x_shape: list[int], dtype: torch.dtype, want_bias: bool
) -> list[Tensor]:
    gx, gb = backward(bits, grads, torch.Size(x_shape), dtype, want_bias)
    return [gx] if gb is None else [gx, gb]


@_backward_op.register_fake
def _(
    bits: Tensor, grads: list[Tensor], x_shape: list[int], dtype: torch.dtype, want_bias: bool
) -> list[Tensor]:
    gx = grads[0].new_empty(x_shape, dtype=dtype)
    return [gx, gx.new_empty(x_shape[-1], dtype=torch.float32)] if want_bias else [gx]


def run_forward(
    x: Tensor, k: int, parts: int = 1, residual: Tensor | None = None, gelu: bool = False
) -> tuple[list[Tensor], Tensor]:
    """`forward`, as a custom operator under torch.compile."""
    if torch.compiler.is_compiling():
        *ys, bits = _forward_op(x, k, parts, residual, gelu)
        return ys, bits
    return forward(x, k, parts, residual=residual, gelu=gelu)


def run_backward(
    bits: Tensor,
    grads: list[Tensor],
    x_shape: torch.Size,
    dtype: torch.dtype | None = None,
    want_bias: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`backward`, as a custom operator under torch.compile."""
    if torch.compiler.is_compiling():
        gx, *gb = _backward_op(bits, grads, list(x_shape), dtype or grads[0].dtype, want_bias)
        return gx, gb[0] if gb else None
    return backward(bits, grads, x_shape, dtype, want_bias)


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class BiasSink(torch.autograd.Function):
    """x unchanged; the backward passes x's gradient on and also returns it, summed over every
    dim but the last, as the gradient of `bias`.

    For a product that added `bias` with its gradient cut (`F.linear(a, w, bias.detach())`):
    the bias's gradient is the column sums of the product's output gradient, which AbsTopK's
    backward kernels compute while they write that gradient (`want_bias`), saving a pass over
    it. This is the same rule on the reference path, and the definition the kernels are
    tested against."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.bias_dtype = bias.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        gb = grad.reshape(-1, grad.shape[-1]).sum(dim=0, dtype=torch.float32)
        return grad, gb.to(ctx.bias_dtype)


def bias_sink(x: Tensor, bias: Tensor | None) -> Tensor:
    """`BiasSink` when there is a bias, else x."""
    return x if bias is None else BiasSink.apply(x, bias)


class AbsTopKFunction(torch.autograd.Function):
    """ys = AbsTopK of `parts` slices of x; the backward passes each gradient through its
    slice's kept entries. `triton` saves the kept bits, `reference` the outputs. A `bias`
    (triton only) gets x's gradient's column sums as its gradient (`BiasSink` says when)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, k: int, parts: int, backend: str, bias: Tensor | None = None
    ) -> Tensor | tuple[Tensor, ...]:
        if backend == "triton":
            ys, bits = run_forward(x, k, parts)
            ctx.save_for_backward(bits)
        else:
            if bias is not None:
                raise ValueError("AbsTopKFunction: a bias needs the triton backend (bias_sink)")
            ys = [reference_forward(s, k) for s in x.chunk(parts, dim=-1)]
            ctx.save_for_backward(*ys)
        ctx.k, ctx.backend, ctx.x_shape = k, backend, x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return ys[0] if parts == 1 else tuple(ys)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, *grads: Tensor
    ) -> tuple[Tensor, None, None, None, Tensor | None]:
        saved = ctx.saved_tensors
        if ctx.backend == "triton":
            gx, gb = run_backward(
                saved[0], list(grads), ctx.x_shape, None, ctx.bias_dtype is not None
            )
            return gx, None, None, None, as_bias_grad(gb, ctx.bias_dtype)
        gxs = [reference_backward(y, g, ctx.k) for y, g in zip(saved, grads, strict=True)]
        return torch.cat(gxs, dim=-1), None, None, None, None


class ResidualAbsTopKFunction(torch.autograd.Function):
    """r + AbsTopK(x) in one pass (a sublayer's write into the residual stream), without
    materialising AbsTopK(x); the backward passes the gradient to r unchanged and, masked and
    cast in one pass, to x (and its column sums to `bias`, as `AbsTopKFunction` does)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, r: Tensor, x: Tensor, k: int, bias: Tensor | None = None
    ) -> Tensor:
        (out,), bits = run_forward(x, k, residual=r)
        ctx.save_for_backward(bits)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, Tensor, None, Tensor | None]:
        (bits,) = ctx.saved_tensors
        want_bias = ctx.bias_dtype is not None
        gx, gb = run_backward(bits, [grad], ctx.x_shape, ctx.x_dtype, want_bias)
        return grad, gx, None, as_bias_grad(gb, ctx.bias_dtype)
