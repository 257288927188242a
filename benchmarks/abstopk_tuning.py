"""Tuning the AbsTopK forward kernel: counting strategies x warps per row, on the GPU.

    python benchmarks/abstopk_tuning.py

Each strategy finds the same exact threshold (checked against the reference) and differs only
in how a pass counts candidates:
  shipped   one bit per pass, one `key >= c` count (int32) per element: the kernel's
            `bits` search (`_keep_of` without GUIDED);
  packed3   two bits per pass, three `key >= c` counts packed into one int64 sum (the search
            shipped before 2026-11-21);
  sum3      two bits per pass, three separate int32 sums;
  signbit   the shipped search counting `key >= c` as the sign bit of (c - 1) - key;
  pair32    two bits per pass, two int32 sums (n1 + n2 << 16 packed, n3 alone);
  hist      radix select, 8 bits per pass: a 256-bin histogram of the next digit among keys
            sharing the threshold's prefix, then a suffix scan over the bins.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from sparse_tf.kernels.abstopk import _keep_of, _unpack, reference_forward
from sparse_tf.kernels.timing import median_ms_one


@triton.jit
def _fwd(x_ptr, y_ptr, n_cols, k, stride, BLOCK: tl.constexpr, LOW_BIT: tl.constexpr,
         MODE: tl.constexpr, HBINS: tl.constexpr = 512):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    in_row = offs < n_cols
    x = tl.load(x_ptr + row * stride + offs, mask=in_row, other=0.0).to(tl.float32)
    key = tl.abs(x).to(tl.int32, bitcast=True)
    key = tl.where(in_row, key, -1)
    if MODE == 0:  # shipped: one bit per pass (the kernel's own search)
        keep = _unpack(_keep_of(key >> LOW_BIT, 0.0, n_cols, k, 0.0, LOW_BIT, False, 4), BLOCK)
    else:
        t = tl.zeros((), dtype=tl.int32)
        if MODE == 1:  # sum3: the shipped search with three separate int32 sums
            for p in tl.static_range((31 - LOW_BIT) // 2):
                shift = 29 - 2 * p
                c1 = t | (1 << shift)
                c2 = t | (2 << shift)
                c3 = t | (3 << shift)
                n1 = tl.sum((key >= c1).to(tl.int32), axis=0)
                n2 = tl.sum((key >= c2).to(tl.int32), axis=0)
                n3 = tl.sum((key >= c3).to(tl.int32), axis=0)
                t = tl.where(n3 >= k, c3, tl.where(n2 >= k, c2, tl.where(n1 >= k, c1, t)))
            if (31 - LOW_BIT) % 2 == 1:
                c1 = t | (1 << LOW_BIT)
                n1 = tl.sum((key >= c1).to(tl.int32), axis=0)
                t = tl.where(n1 >= k, c1, t)
        elif MODE == 3:  # packed3: two bits per pass, three counts packed in one int64 sum
            for p in tl.static_range((31 - LOW_BIT) // 2):
                shift = 29 - 2 * p
                c1 = t | (1 << shift)
                c2 = t | (2 << shift)
                c3 = t | (3 << shift)
                packed = (
                    (key >= c1).to(tl.int64)
                    + ((key >= c2).to(tl.int64) << 20)
                    + ((key >= c3).to(tl.int64) << 40)
                )
                total = tl.sum(packed, axis=0)
                n1 = (total & 0xFFFFF).to(tl.int32)
                n2 = ((total >> 20) & 0xFFFFF).to(tl.int32)
                n3 = (total >> 40).to(tl.int32)
                t = tl.where(n3 >= k, c3, tl.where(n2 >= k, c2, tl.where(n1 >= k, c1, t)))
            if (31 - LOW_BIT) % 2 == 1:
                c1 = t | (1 << LOW_BIT)
                n1 = tl.sum((key >= c1).to(tl.int32), axis=0)
                t = tl.where(n1 >= k, c1, t)
        elif MODE == 4:  # pair32: two bits per pass, n1 and n2 packed in one int32, n3 alone
            for p in tl.static_range((31 - LOW_BIT) // 2):
                shift = 29 - 2 * p
                c1 = t | (1 << shift)
                c2 = t | (2 << shift)
                c3 = t | (3 << shift)
                n12 = tl.sum((key >= c1).to(tl.int32) + ((key >= c2).to(tl.int32) << 16), axis=0)
                n3 = tl.sum((key >= c3).to(tl.int32), axis=0)
                n1, n2 = n12 & 0xFFFF, n12 >> 16
                t = tl.where(n3 >= k, c3, tl.where(n2 >= k, c2, tl.where(n1 >= k, c1, t)))
            if (31 - LOW_BIT) % 2 == 1:
                c1 = t | (1 << LOW_BIT)
                n1 = tl.sum((key >= c1).to(tl.int32), axis=0)
                t = tl.where(n1 >= k, c1, t)
        elif MODE == 5:  # signbit: one bit per pass, key >= c counted as the sign of (c-1)-key
            for p in tl.static_range(31 - LOW_BIT):
                c = t | (1 << (30 - p))
                below = ((c - 1) - key).to(tl.uint32, bitcast=True) >> 31  # 1 where key >= c
                n = tl.sum(below.to(tl.int32), axis=0)
                t = tl.where(n >= k, c, t)
        else:  # hist: radix select, 8 bits per pass
            # A histogram of the next digit among keys that share the threshold's prefix
            # (others go to an overflow bin), then the largest digit whose suffix count still
            # reaches k. The last pass of fp32 overlaps the previous one by a bit, which is the
            # same for every matching key.
            n_above = tl.zeros((), dtype=tl.int32)
            for p in tl.static_range((31 - LOW_BIT + 7) // 8):
                hi = 30 - 8 * p
                lo = hi - 7 if hi >= 7 else 0
                match = ((key >> (hi + 1)) == (t >> (hi + 1))) & in_row
                digit = tl.where(match, (key >> lo) & 255, 256)
                h = tl.histogram(digit, HBINS)  # [512]; bins 256.. are the overflow
                bins = tl.arange(0, HBINS)
                h = tl.where(bins < 256, h, 0)
                suffix = tl.cumsum(h, axis=0, reverse=True)
                b = tl.max(tl.where((suffix >= k - n_above) & (bins < 256), bins, -1), axis=0)
                n_above += tl.sum(tl.where(bins > b, h, 0), axis=0)
                t = t | (b << lo)
        above = key > t
        tied = key == t
        room = k - tl.sum(above.to(tl.int32), axis=0)
        keep = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= room))
    y = tl.where(keep, x, 0.0).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + row * stride + offs, y, mask=in_row)


MODES = {"shipped": 0, "signbit": 5, "packed3": 3, "sum3": 1, "pair32": 4, "hist": 2}


def run(x: torch.Tensor, k: int, mode: int, warps: int) -> torch.Tensor:
    y = torch.empty_like(x)
    low = {torch.float32: 0, torch.bfloat16: 16}[x.dtype]
    _fwd[(x.shape[0],)](x, y, x.shape[1], k, x.stride(0), BLOCK=triton.next_power_of_2(x.shape[1]),
                        LOW_BIT=low, MODE=mode, num_warps=warps)  # fmt: skip
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="65536 x 1024 bf16 only, 2 modes")
    args = parser.parse_args()
    modes = {m: MODES[m] for m in ("shipped", "signbit")} if args.quick else MODES
    shapes = [(65536, 1024)] if args.quick else [(65536, 1024), (65536, 4096)]
    dtypes = (torch.bfloat16,) if args.quick else (torch.bfloat16, torch.float32)
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    print("| tokens x width | dtype | copy ms | best | " + " | ".join(modes) + " |")
    for rows, width in shapes:
        for dtype in dtypes:
            x = torch.randn(rows, width, device="cuda", dtype=dtype)
            k = width // 4
            expected = reference_forward(x, k)
            copy = median_ms_one(lambda x=x: x.clone(), 15)
            cells, best = [], (1e9, "")
            for name, mode in modes.items():
                per_warps = []
                for warps in (1, 2, 4, 8):
                    if warps * 32 > width:
                        continue
                    assert torch.equal(run(x, k, mode, warps), expected), (name, warps)
                    ms = median_ms_one(lambda x=x, k=k, m=mode, w=warps: run(x, k, m, w), 15)
                    per_warps.append((ms, warps))
                    best = min(best, (ms, f"{name}/w{warps}"))
                ms, warps = min(per_warps)
                cells.append(f"{ms:.3f} (w{warps})")
            print(f"| {rows} x {width} | {str(dtype)[6:]} | {copy:.3f} | {best[1]} {best[0]:.3f} | "
                  + " | ".join(cells) + " |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
