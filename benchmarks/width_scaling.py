"""Widening at a fixed number of nonzeros: step time and memory as d_model doubles.

    python benchmarks/width_scaling.py                      # d_model 1024, 2048, 4096 on a GPU
    python benchmarks/width_scaling.py --widths 1024 2048 --steps 5
    python benchmarks/width_scaling.py --device cpu --widths 64 128 --batch 2 --n-ctx 32 --steps 1

The paper's scaling result (at a fixed number of nonzero weights, wider models are more capable
and more interpretable) is affordable only if a wider, sparser model does not cost its dense
width. Each width runs 8 layers at an L0 that keeps every block matrix at the same number of
nonzeros as the first width at 1/64 (1/64, 1/256, 1/1024 for 1024, 2048, 4096), in three
variants: `dense` (the same width trained dense, no AbsTopK), `sparse_tf` (this library's
default path) and `naive` (masked dense weights, torch.topk for AbsTopK and the projection:
SPARSE_TF_KERNELS=reference); with --graphs also `dense-graphed` and `sparse_tf-graphed`, whose
forward + backward replay as one CUDA graph (the trainer's --cuda-graphs). A step is forward +
backward + optimizer step (with the projection) on batch x 256 tokens in bf16 (fp32 on a CPU,
for a quick check of the script); the batch is --batch or, where a variant runs out of memory,
half of it for every variant of that width, and so on. The table gives the median step time,
the time per 16,384 tokens, peak GPU memory, and the growth of the time per token from the
previous width (dense grows about 4x per doubling: its FLOPs do).
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
from step_speed import GraphedStep  # benchmarks/step_speed.py

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss

BASE_L0 = 1 / 64
"""The L0 of the narrowest width; wider ones keep its number of nonzeros per block matrix."""
VARIANTS = ("dense", "sparse_tf", "naive")
GRAPHED = "-graphed"
"""Suffix of the variants whose forward + backward replay as a CUDA graph (--graphs)."""


def step_times(
    args: argparse.Namespace, variant: str, width: int, l0: float, batch: int, steps: int
) -> tuple[list[float], float]:
    """Seconds per step and peak GiB (0 on a CPU) of one variant after `args.warmup` steps
    (raises torch.OutOfMemoryError)."""
    graphed = variant.endswith(GRAPHED)
    variant = variant.removesuffix(GRAPHED)
    os.environ["SPARSE_TF_KERNELS"] = "reference" if variant == "naive" else "auto"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    dense = variant == "dense"
    cfg = GPTConfig(
        vocab_size=2048, n_ctx=args.n_ctx, n_layer=8, d_model=width, afrac=None if dense else 0.25
    )
    model = opt = step = None
    try:
        with device:  # initialised in place: a d_model-4096 model is slow to fill on a CPU
            model = GPT(cfg)
        sparsity = None if dense else SparsityConfig(l0=l0, anneal_start=0.0, anneal_end=0.0)
        opt = SparseOptimizer(model, OptimConfig(), sparsity, args.warmup + steps)
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.n_ctx), device=device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        step = GraphedStep(model, tokens, bf16=True) if graphed else None
        for i in range(args.warmup + steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            if step is not None:
                step()
                opt.step()
                step.zero_grad()  # in place: the graph accumulates into these tensors
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = lm_loss(model(tokens), tokens)
                loss.backward()
                opt.step()
                opt.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        return times, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    finally:
        del model, opt, step
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def variants(args: argparse.Namespace) -> list[str]:
    graphed = [v + GRAPHED for v in ("dense", "sparse_tf")] if args.graphs else []
    return [*VARIANTS, *graphed]


def run_width(
    args: argparse.Namespace, width: int, l0: float
) -> tuple[int, list[tuple[str, float, float]]]:
    """(batch, [(variant, ms per step, peak GiB)]) of one width: every variant at --batch, or,
    as soon as one runs out of memory, all again at half the batch."""
    batch = args.batch
    while True:
        try:
            out = []
            for variant in variants(args):
                times, mem = step_times(args, variant, width, l0, batch, args.steps)
                out.append((variant, statistics.median(times) * 1e3, mem))
            return batch, out
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--n-ctx", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also dense-graphed and sparse_tf-graphed: forward + backward replayed as a CUDA "
        "graph, as the trainer's --cuda-graphs does (CUDA)",
    )
    args = parser.parse_args()
    if args.graphs and not args.device.startswith("cuda"):
        parser.error("--graphs: CUDA only")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{where}, torch {torch.__version__}, 8 layers, ctx {args.n_ctx}, bf16 on CUDA")
    print(
        "| d_model | L0 | batch | variant | ms/step | ms per 16k tokens | peak GiB | "
        "x per doubling |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    previous: dict[str, float] = {}
    for width in args.widths:
        l0 = BASE_L0 * (args.widths[0] / width) ** 2  # the same nonzeros per block matrix
        batch, results = run_width(args, width, l0)
        for variant, ms, mem in results:  # each width as soon as it is done
            per16k = ms * 16384 / (batch * args.n_ctx)
            growth = f"{per16k / previous[variant]:.2f}x" if variant in previous else ""
            previous[variant] = per16k
            print(
                f"| {width} | 1/{round(1 / l0)} | {batch} | {variant} | {ms:.1f} | "
                f"{per16k:.1f} | {mem:.1f} | {growth} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
