"""Where the AbsTopK forward's time goes: the shipped kernel's parts, taken away one at a time.

    python benchmarks/abstopk_ablation.py            # on a CUDA machine

One benchmark kernel, built from the library's own pieces (`sparse_tf.kernels.abstopk`),
loads a row, finds the threshold, ranks the ties, stores the output and the kept bits, as the
shipped forward does. Its variants:

  bits              the bit search (shipped below `abstopk.GUIDED_FROM_WIDTH`)
  guided            the guided search, one key per count
  guided, paired    the guided search, two bf16 keys per count (shipped from
                    `abstopk.PAIRED_FROM_WIDTH`)
  bits, row scan    bits, with the ties ranked by a prefix sum over the row (a rank per entry)
  guided, row scan  guided, likewise: both shipped until the ties were ranked from bit words
                    (`abstopk._kept_words`)
  no search         the threshold guessed from the row's mean (one count, not exact)
  no tie ranks      ... and no tie ranks: keep key > t
  no bits           ... and no kept-set bits stored
  load + store      the row loaded and stored back: the floor of one program per row
  ties by search    bits, with the ties ranked by a bit search on their indices (skipped
                    where every tie fits) instead of a prefix sum: tried, slower
  R rows            bits on R rows per program at once ([R] thresholds): tried, slower

and, for comparison, `copy` (x.clone(): one read and one write, the HBM floor). Rows of
heavy-tailed values (x = z·sqrt|z| with z normal, a scale per row; `--values normal`: z),
k = width / 4, at 1, 2 or 4 warps (1,024 wide) or 4 and 8 (4,096 wide). The exact variants are
checked equal to the reference first. Variants of one shape alternate within every timing iteration
(`timing.median_ms`).
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from sparse_tf.kernels import abstopk
from sparse_tf.kernels.abstopk import (
    _bits_threshold,
    _count_ge,
    _count_ge_pairs,
    _guided_threshold,
    _kept_words,
    _pack,
    _pack_pairs,
    _store_words,
    _unpack,
)
from sparse_tf.kernels.timing import median_ms
from sparse_tf.kernels.triton_support import tl, triton

# Each variant as the kernel's switches: SEARCH (0 bits, 1 guided, 2 none: the guided search's
# first guess taken as the threshold), PAIRED, RANKS (0 none: keep key > t, 1 from bit words as
# shipped, 2 bit search on the ties' indices, 3 prefix sum over the row), STORE_BITS, COPY_ONLY.
VARIANTS = {
    "bits": dict(SEARCH=0, PAIRED=False, RANKS=1, STORE_BITS=True, COPY_ONLY=False),
    "guided": dict(SEARCH=1, PAIRED=False, RANKS=1, STORE_BITS=True, COPY_ONLY=False),
    "guided, paired": dict(SEARCH=1, PAIRED=True, RANKS=1, STORE_BITS=True, COPY_ONLY=False),
    "bits, row scan": dict(SEARCH=0, PAIRED=False, RANKS=3, STORE_BITS=True, COPY_ONLY=False),
    "guided, row scan": dict(SEARCH=1, PAIRED=False, RANKS=3, STORE_BITS=True, COPY_ONLY=False),
    "no search": dict(SEARCH=2, PAIRED=False, RANKS=1, STORE_BITS=True, COPY_ONLY=False),
    "no tie ranks": dict(SEARCH=2, PAIRED=False, RANKS=0, STORE_BITS=True, COPY_ONLY=False),
    "no bits": dict(SEARCH=2, PAIRED=False, RANKS=0, STORE_BITS=False, COPY_ONLY=False),
    "load + store": dict(SEARCH=2, PAIRED=False, RANKS=0, STORE_BITS=False, COPY_ONLY=True),
    "ties by search": dict(SEARCH=0, PAIRED=False, RANKS=2, STORE_BITS=True, COPY_ONLY=False),
}
EXACT = ("bits", "guided", "guided, paired", "bits, row scan", "guided, row scan", "ties by search")


@triton.jit
def _ties_by_search(key, t, n_above, k, BLOCK: tl.constexpr, INDEX_BITS: tl.constexpr):
    """key > t plus the first k - n_above ties by index, the cut found by a bit search on the
    ties' reversed indices (two per count), skipped where every tie fits."""
    tied = key == t
    need = k - n_above
    keep = key >= t
    if tl.sum(tied.to(tl.int32), axis=0) > need:
        rev = tl.where(tied, BLOCK - tl.arange(0, BLOCK), 0)  # ties in [1, BLOCK]
        pairs = _pack_pairs(rev)
        cut = tl.zeros((), dtype=tl.int32)
        for b in tl.static_range(INDEX_BITS):
            c = cut | (1 << (INDEX_BITS - 1 - b))
            cut = tl.where(_count_ge_pairs(pairs, c, BLOCK) >= need, c, cut)
        keep = (key > t) | (rev >= cut)
    return keep


@triton.jit
def _variant_kernel(x_ptr, y_ptr, bits_ptr, n_cols, k, log_ratio, BLOCK: tl.constexpr,
                    LOW_BIT: tl.constexpr, PEEL: tl.constexpr, INDEX_BITS: tl.constexpr,
                    SEARCH: tl.constexpr, PAIRED: tl.constexpr, RANKS: tl.constexpr,
                    STORE_BITS: tl.constexpr, COPY_ONLY: tl.constexpr):  # fmt: skip
    """One row per program, as `abstopk._abstopk_fwd_kernel` with PARTS = 1, with the parts
    that the switches (VARIANTS) turn off taken away."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=in_row, other=0.0).to(tl.float32)
    key = (tl.abs(x).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)
    key = tl.where(in_row, key, -1)
    if COPY_ONLY:
        tl.store(y_ptr + row * n_cols + offs, x.to(y_ptr.dtype.element_ty), mask=in_row)
    else:
        if SEARCH == 0:
            t, n_above = _bits_threshold(key, k, LOW_BIT)
        elif SEARCH == 1:
            ax_sum = tl.sum(tl.abs(x), axis=0)
            t, n_above = _guided_threshold(key, ax_sum, n_cols, k, log_ratio, LOW_BIT, PEEL, PAIRED)
        else:
            mean = tl.sum(tl.abs(x), axis=0) / n_cols
            t = ((mean * log_ratio).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)
            n_above = _count_ge(key, t + 1)
        if RANKS == 2:
            keep = _ties_by_search(key, t, n_above, k, BLOCK, INDEX_BITS)
        elif RANKS == 1:
            keep = _unpack(_kept_words(key, t, n_above, k), BLOCK)
        elif RANKS == 3:
            tied = key == t
            rank = tl.cumsum(tied.to(tl.int32), axis=0)
            keep = (key > t) | (tied & (rank <= k - n_above))
        else:
            keep = key > t
        y = tl.where(keep, x, 0.0)
        tl.store(y_ptr + row * n_cols + offs, y.to(y_ptr.dtype.element_ty), mask=in_row)
        if STORE_BITS:
            _store_words(bits_ptr + row * tl.cdiv(n_cols, 32), _pack(keep), n_cols)


@triton.jit
def _rows_kernel(x_ptr, y_ptr, bits_ptr, n_rows, n_cols, k, BLOCK: tl.constexpr,
                 LOW_BIT: tl.constexpr, R: tl.constexpr):  # fmt: skip
    """R rows per program, the bit search run on all R at once ([R] thresholds)."""
    rows = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    offs = tl.arange(0, BLOCK)
    live = (rows[:, None] < n_rows) & (offs[None, :] < n_cols)
    ptrs = rows[:, None] * n_cols + offs[None, :]
    x = tl.load(x_ptr + ptrs, mask=live, other=0.0).to(tl.float32)
    key = (tl.abs(x).to(tl.int32, bitcast=True) >> LOW_BIT).to(tl.int32)
    key = tl.where(live, key, -1)
    t = tl.zeros((R,), dtype=tl.int32)
    if LOW_BIT == 16:
        lo, hi = tl.split(tl.reshape(tl.maximum(key, 0), (R, BLOCK // 2, 2)))
        pairs = (lo | (hi << 16)).to(tl.uint32, bitcast=True)
        for b in tl.static_range(15):
            c = t | (1 << (14 - b))
            m = ((c - 1) | 0x8000).to(tl.uint32)
            below = (((m | (m << 16))[:, None] - pairs) >> 15) & 0x10001
            s = tl.sum(below, axis=1)
            t = tl.where(BLOCK - ((s & 0xFFFF) + (s >> 16)).to(tl.int32) >= k, c, t)
    else:
        for b in tl.static_range(31 - LOW_BIT):
            c = t | (1 << (30 - LOW_BIT - b))
            ge = ((c - 1)[:, None] - key).to(tl.uint32, bitcast=True) >> 31
            t = tl.where(tl.sum(ge.to(tl.int32), axis=1) >= k, c, t)
    n_above = tl.sum((key > t[:, None]).to(tl.int32), axis=1)
    tied = key == t[:, None]
    rank = tl.cumsum(tied.to(tl.int32), axis=1)
    keep = (key > t[:, None]) | (tied & (rank <= (k - n_above)[:, None]))
    tl.store(y_ptr + ptrs, tl.where(keep, x, 0.0).to(y_ptr.dtype.element_ty), mask=live)
    WORDS: tl.constexpr = BLOCK // 32
    words = tl.sum(tl.reshape(keep.to(tl.int32) << (offs % 32)[None, :], (R, WORDS, 32)), axis=2)
    w = tl.arange(0, WORDS)
    word_live = (rows[:, None] < n_rows) & (w[None, :] < tl.cdiv(n_cols, 32))
    tl.store(bits_ptr + rows[:, None] * tl.cdiv(n_cols, 32) + w[None, :], words, mask=word_live)


def run_variant(x: torch.Tensor, k: int, variant: str, warps: int) -> torch.Tensor:
    rows, width = x.shape
    y = torch.empty_like(x)
    bits = torch.empty(rows, triton.cdiv(width, 32), dtype=torch.int32, device=x.device)
    block = triton.next_power_of_2(width)
    _variant_kernel[(rows,)](
        x, y, bits, width, k, math.log(width / k),
        BLOCK=block, LOW_BIT=abstopk._LOW_BIT[x.dtype], PEEL=abstopk.PEEL,
        INDEX_BITS=block.bit_length(), num_warps=warps, **VARIANTS[variant],
    )  # fmt: skip
    return y


def run_rows(x: torch.Tensor, k: int, rows_per_program: int, warps: int) -> torch.Tensor:
    rows, width = x.shape
    y = torch.empty_like(x)
    bits = torch.empty(rows, triton.cdiv(width, 32), dtype=torch.int32, device=x.device)
    _rows_kernel[(triton.cdiv(rows, rows_per_program),)](
        x, y, bits, rows, width, k, BLOCK=triton.next_power_of_2(width),
        LOW_BIT=abstopk._LOW_BIT[x.dtype], R=rows_per_program, num_warps=warps,
    )  # fmt: skip
    return y


def sample(rows: int, width: int, dtype: torch.dtype, values: str, device: str) -> torch.Tensor:
    """Rows of normal values, or heavy-tailed ones (z·sqrt|z|, z normal), a scale per row."""
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(rows, width, device=device, generator=g)
    scale = torch.rand(rows, 1, device=device, generator=g).add(0.1)
    return ((z if values == "normal" else z * z.abs().sqrt()) * scale).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["16384x1024:fp32", "16384x1024:bf16", "49152x1024:bf16", "16384x4096:bf16"],
        help="ROWSxWIDTH:DTYPE (fp32 or bf16)",
    )
    parser.add_argument("--values", nargs="+", choices=["heavy", "normal"], default=["heavy"])
    args = parser.parse_args()
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| rows x width | dtype | values | variant | warps | ms | of copy's speed |")
    print("|---|---|---|---|---|---|---|")
    for case, values in itertools.product(args.cases, args.values):
        shape, _, dtype_name = case.partition(":")
        rows, width = map(int, shape.split("x"))
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        x = sample(rows, width, dtype, values, args.device)
        k = width // 4
        expected = abstopk.reference_forward(x, k)
        wide = width > 1024
        for variant in EXACT:
            assert torch.equal(run_variant(x, k, variant, 4 if wide else 1), expected), case
        for r in () if wide else (2, 4):
            assert torch.equal(run_rows(x, k, r, 1), expected), (case, r)
        fns = {"copy|": lambda x=x: x.clone()}
        for warps in (4, 8) if wide else (1, 2, 4):
            for name, switches in VARIANTS.items():
                if switches["PAIRED"] and dtype != torch.bfloat16:
                    continue  # pairs are of 15-bit keys
                if warps == 2 and not wide:  # the rows variants only
                    continue
                fns[f"{name}|{warps}"] = lambda x=x, k=k, v=name, w=warps: run_variant(x, k, v, w)
            for r in () if wide else (2, 4):
                fns[f"{r} rows|{warps}"] = lambda x=x, k=k, r=r, w=warps: run_rows(x, k, r, w)
        ms = median_ms(fns, args.iters)
        for key, t in ms.items():
            name, _, warps = key.partition("|")
            print(f"| {rows} x {width} | {dtype_name} | {values} | {name} | {warps} | {t:.4f} |"
                  f" {ms['copy|'] / t:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
