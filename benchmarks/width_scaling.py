"""Widening at a fixed number of nonzeros: step time and memory as d_model doubles.

    python benchmarks/width_scaling.py                      # d_model 1024, 2048, 4096 on a GPU
    python benchmarks/width_scaling.py --widths 1024 2048 --steps 5

The paper's scaling result (at a fixed number of nonzero weights, wider models are more capable
and more interpretable) is affordable only if a wider, sparser model does not cost its dense
width. Each width runs 8 layers at an L0 that keeps every block matrix at the same number of
nonzeros as d_model 1024 at 1/64 (1/64, 1/256, 1/1024 for 1024, 2048, 4096), in three
variants: `dense` (the same width trained dense, no AbsTopK), `sparse_tf` (this library's
default path) and `naive` (masked dense weights, torch.topk for AbsTopK and the projection:
SPARSE_TF_KERNELS=reference). A step is forward + backward + optimizer step (with the
projection) on batch x 256 tokens in bf16; the batch is --batch or, where that does not fit,
the largest power of two below it that does, the same for every variant of a width. The table
gives the median step time, the time per 16,384 tokens, peak GPU memory, and the growth of the
time per token from the previous width (dense grows about 4x per doubling: its FLOPs do).
Variants run one after another (a d_model-4096 model and its Adam state do not fit twice), each
with a fresh model, after --warmup steps.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss

BASE_WIDTH, BASE_L0 = 1024, 1 / 64


def step_times(
    variant: str, width: int, l0: float, batch: int, steps: int, warmup: int
) -> tuple[list[float], float]:
    """Seconds per step and peak GiB of one variant (raises torch.OutOfMemoryError)."""
    os.environ["SPARSE_TF_KERNELS"] = "reference" if variant == "naive" else "auto"
    torch.manual_seed(0)
    dense = variant == "dense"
    cfg = GPTConfig(
        vocab_size=2048, n_ctx=256, n_layer=8, d_model=width, afrac=None if dense else 0.25
    )
    model = opt = None
    try:
        model = GPT(cfg).cuda()
        sparsity = None if dense else SparsityConfig(l0=l0, anneal_start=0.0, anneal_end=0.0)
        opt = SparseOptimizer(model, OptimConfig(), sparsity, warmup + steps)
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.n_ctx), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = lm_loss(model(tokens), tokens)
            loss.backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return times, torch.cuda.max_memory_allocated() / 2**30
    finally:
        del model, opt
        gc.collect()
        torch.cuda.empty_cache()


def fits(width: int, l0: float, batch: int) -> bool:
    """Whether every variant runs one step at this batch."""
    try:
        for variant in ("dense", "sparse_tf", "naive"):
            step_times(variant, width, l0, batch, 1, 0)
    except torch.OutOfMemoryError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for width in args.widths:
        l0 = BASE_L0 * (BASE_WIDTH / width) ** 2  # the same nonzeros per block matrix
        batch = args.batch
        while batch > 1 and not fits(width, l0, batch):
            batch //= 2
        for variant in ("dense", "sparse_tf", "naive"):
            times, mem = step_times(variant, width, l0, batch, args.steps, args.warmup)
            ms = statistics.median(times) * 1e3
            rows.append((width, l0, batch, variant, ms, ms * 16384 / (batch * 256), mem))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, 8 layers, ctx 256, bf16")
    print(
        "| d_model | L0 | batch | variant | ms/step | ms per 16k tokens | peak GiB | "
        "x per doubling |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous: dict[str, float] = {}
    for width, l0, batch, variant, ms, per16k, mem in rows:
        growth = f"{per16k / previous[variant]:.2f}x" if variant in previous else ""
        previous[variant] = per16k
        print(
            f"| {width} | 1/{round(1 / l0)} | {batch} | {variant} | {ms:.1f} | {per16k:.1f} | "
            f"{mem:.1f} | {growth} |"
        )


if __name__ == "__main__":
    main()
