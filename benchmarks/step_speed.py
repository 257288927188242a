"""Training-step speed: the sparse recipe vs its dense twin, same shape, interleaved.

    python benchmarks/step_speed.py                       # CPU, the tiny shape
    python benchmarks/step_speed.py --device cuda --d-model 1024 --n-layer 8 --n-ctx 256 \
        --batch 64 --bf16                                 # paper shape on a GPU

A step is forward + backward + SparseOptimizer.step (grad RMS, Adam, projection, decay).
The sparse run sits at its target L0 (no anneal) so every step projects; AbsTopK is on at the
8 sites. On CUDA a third variant, `eager`, is the sparse step with its projection launched op
by op instead of replayed as one CUDA graph (SPARSE_TF_CUDA_GRAPHS=0). Steps of the variants
alternate so that machine noise hits all alike; the table gives medians and the ratio to dense.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--l0", type=float, default=1 / 64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()

    device = torch.device(args.device)
    tokens = torch.randint(0, args.vocab_size, (args.batch, args.n_ctx), device=device)
    sparsity = SparsityConfig(l0=args.l0, anneal_start=0.0, anneal_end=0.0)
    variants = {  # name: (afrac, sparsity, projection as a CUDA graph)
        "sparse": (0.25, sparsity, True),
        "eager": (0.25, sparsity, False),  # the same, its projection launched op by op
        "dense": (None, None, True),
    }
    if device.type != "cuda":
        del variants["eager"]  # CUDA graphs are a GPU matter
    runs = {}
    total = args.warmup + args.steps
    for name, (afrac, sparsity, _) in variants.items():
        torch.manual_seed(0)
        cfg = GPTConfig(
            vocab_size=args.vocab_size,
            n_ctx=args.n_ctx,
            n_layer=args.n_layer,
            d_model=args.d_model,
            afrac=afrac,
        )
        model = GPT(cfg).to(device)
        graph = variants[name][2]
        os.environ["SPARSE_TF_CUDA_GRAPHS"] = "1" if graph else "0"  # also for the first projection
        runs[name] = (model, SparseOptimizer(model, OptimConfig(), sparsity, total), [], graph)

    for i in range(total):
        for model, opt, times, graph in runs.values():
            os.environ["SPARSE_TF_CUDA_GRAPHS"] = "1" if graph else "0"
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = lm_loss(model(tokens), tokens)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)

    n_tokens = args.batch * args.n_ctx
    dense_ms = statistics.median(runs["dense"][2]) * 1e3
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(
        f"shape: {args.n_layer} layers, d_model {args.d_model}, vocab {args.vocab_size}, "
        f"batch {args.batch} x {args.n_ctx}, L0 {args.l0:g}, bf16 {args.bf16}"
    )
    print(f"{'variant':<8} {'ms/step':>9} {'tokens/s':>10} {'vs dense':>9}")
    for name, (_, _, times, _) in runs.items():
        ms = statistics.median(times) * 1e3
        print(f"{name:<8} {ms:>9.1f} {n_tokens / ms * 1e3:>10,.0f} {dense_ms / ms:>8.2f}x")


if __name__ == "__main__":
    main()
