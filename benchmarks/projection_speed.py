"""The per-step L0 projection at a preset's shape: its cost against one training step.

    python benchmarks/projection_speed.py --preset paper-d1024      # on a CUDA machine

Times (CUDA events, median of --iters) `project_weights_` over all sparse matrices of the model
at the preset's target L0, as training calls it: the weights alternate between two dense states
1% apart (as after successive Adam steps), so every call has work and its threshold moves.
Variants: replayed as one CUDA graph with the warm start (the default), the same with the warm
state forgotten before every call (the cold radix select), and launched op by op. Then the
parts, for one matrix of each shape: the per-neuron protection (top-j of every row/column: the
AbsTopK mask kernel, and the pure-torch reference for comparison) and the global `torch.topk`;
the rest of `weight_mask` is the tie rule and the masking.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from sparse_tf import GPT, kernels
from sparse_tf.kernels import projection
from sparse_tf.kernels.timing import median_ms_one
from sparse_tf.presets import preset
from sparse_tf.sparsity import COLS, ROWS, kept_count, project_weights_, topk_mask, weight_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper-d1024")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--profile", action="store_true", help="also print the GPU kernels of one projection"
    )
    args = parser.parse_args()
    cfg = preset(args.preset)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT(cfg.model)
    sp, l0 = cfg.sparsity, cfg.sparsity.l0
    states = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    states.append({n: p * (1 + 0.01 * torch.randn_like(p)) for n, p in states[0].items()})
    turn = [0]

    def restore() -> None:
        turn[0] ^= 1
        for n, p in model.named_parameters():
            p.data.copy_(states[turn[0]][n])  # dense weights again, as after an Adam step

    def project() -> None:
        restore()
        project_weights_(model, l0, sp)

    def project_cold() -> None:
        for layout in projection._LAYOUTS.values():
            layout.warm[:, 0] = -1  # no previous threshold: the full radix select
        project()

    weights = model.sparse_weights()
    totals = {}
    for mode, flag, fn in (
        ("CUDA graph, warm start", "1", project),
        ("CUDA graph, cold", "1", project_cold),
        ("eager launches, warm start", "0", project),
    ):
        os.environ["SPARSE_TF_CUDA_GRAPHS"] = flag
        totals[mode] = median_ms_one(fn, args.iters) - median_ms_one(restore, args.iters)
    os.environ["SPARSE_TF_CUDA_GRAPHS"] = "1"
    total = totals["CUDA graph, warm start"]
    print(f"{args.preset} on {torch.cuda.get_device_name()}: {len(weights)} matrices, L0 {l0:g}")
    for mode, ms in totals.items():
        print(f"project_weights_ (all matrices, {mode}): {ms:.2f} ms per step")
    restore()
    todo = [w for w in weights if kept_count(w, l0, sp) < w.param.numel()]
    params = [w.param for w in todo]
    protections = [
        projection.Protect(w.neuron_dim, sp.min_per_neuron) if w.neuron_dim is not None else None
        for w in todo
    ]
    ks = [kept_count(w, l0, sp) for w in todo]
    projection._select(params, protections, ks, projection.CHUNK)
    restore()
    hits = int(projection._select(params, protections, ks, projection.CHUNK).mode.sum())
    print(f"warm start: the threshold was inside the window for {hits} of {len(todo)} matrices")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        os.environ["SPARSE_TF_CUDA_GRAPHS"] = "0"  # one row per launch
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            project()
            torch.cuda.synchronize()
        os.environ["SPARSE_TF_CUDA_GRAPHS"] = "1"
        print(
            prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=20, max_name_column_width=60
            )
        )
    print("| matrix | shape | kept | weight_mask | protection | (reference) | topk | of total |")
    print("|---|---|---|---|---|---|---|---|")
    seen = set()
    for w in weights:
        shape = tuple(w.param.shape)
        if (shape, w.neuron_dim) in seen:
            continue
        seen.add((shape, w.neuron_dim))
        k = kept_count(w, l0, sp)
        score = w.param.detach().abs()
        neurons = w.param.detach() if w.neuron_dim != COLS else w.param.detach().T
        mask_ms = median_ms_one(lambda w=w: weight_mask(w, l0, sp), args.iters)
        prot_ms, prot_ref_ms = math.nan, math.nan
        if w.neuron_dim in (ROWS, COLS):
            j = sp.min_per_neuron
            prot_ms = median_ms_one(lambda n=neurons, j=j: kernels.abs_topk_mask(n, j), args.iters)
            prot_ref_ms = median_ms_one(lambda n=neurons, j=j: topk_mask(n, j), args.iters)
        topk_ms = median_ms_one(
            lambda s=score, k=k: s.reshape(-1).topk(k, sorted=False), args.iters
        )
        print(
            f"| {w.name} | {shape} | {k:,} | {mask_ms:.3f} | {prot_ms:.3f} | {prot_ref_ms:.3f} | "
            f"{topk_ms:.3f} | {mask_ms / total:.0%} |"
        )


if __name__ == "__main__":
    main()
