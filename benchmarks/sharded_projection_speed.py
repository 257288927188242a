"""The L0 projection of an FSDP-sharded model against the single-process one, per step.

    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_projection_speed.py \
        --preset paper-d1024

Every rank builds the preset's model (same seed), keeps a whole copy for the single-process
projection and shards the other with FSDP2; then, from the same dense weights each time, it
times (wall clock between barriers, GPU synchronised, median of --iters) `project_weights_`
on the shards (the radix-select kernels with the histograms all-reduced over the ranks, and
the pure-torch implementation) and on the whole copy (one process's projection, as a CUDA
graph). Rank 0 checks that the sharded kept sets equal the whole one's and prints the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from sparse_tf import GPT
from sparse_tf.parallel.fsdp import local, shard_model
from sparse_tf.presets import preset
from sparse_tf.sparsity import project_weights_


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], object], reset: Callable[[], object], iters: int) -> float:
    times = []
    for i in range(iters + 2):  # two warm-ups: compilation, autotuning, graph capture
        reset()
        sync()
        dist.barrier()
        start = time.perf_counter()
        fn()
        sync()
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper-d1024")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:  # a dry run of the script on CPU ranks (the "triton" rows then run the reference)
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    cfg = preset(args.preset)
    sp, l0 = cfg.sparsity, cfg.sparsity.l0
    torch.manual_seed(0)
    with torch.device(device):
        whole, sharded = GPT(cfg.model), GPT(cfg.model)
    sharded.load_state_dict(whole.state_dict())
    shard_model(sharded, device)
    dense_whole = {n: p.detach().clone() for n, p in whole.named_parameters()}
    dense_shard = {n: local(p).detach().clone() for n, p in sharded.named_parameters()}

    def reset() -> None:
        with torch.no_grad():
            for n, p in whole.named_parameters():
                p.copy_(dense_whole[n])
            for n, p in sharded.named_parameters():
                local(p).copy_(dense_shard[n])

    rows = {}
    for backend in ("triton", "reference") if device.type == "cuda" else ("reference",):
        os.environ["SPARSE_TF_KERNELS"] = backend
        rows[f"sharded over {dist.get_world_size()} GPUs, {backend}"] = wall_ms(
            lambda: project_weights_(sharded, l0, sp), reset, args.iters
        )
        # The kept sets equal one process's (each rank checks its rows).
        reset()
        project_weights_(sharded, l0, sp)
        project_weights_(whole, l0, sp)
        world, me = dist.get_world_size(), dist.get_rank()
        for (name, p), q in zip(sharded.named_parameters(), whole.parameters(), strict=True):
            rows_per_rank = -(-q.shape[0] // world)
            mine = q[me * rows_per_rank : (me + 1) * rows_per_rank]
            if not torch.equal(local(p) != 0, mine != 0):
                raise SystemExit(f"rank {me}: {name}: kept set differs from one process's")
    os.environ["SPARSE_TF_KERNELS"] = "auto"
    rows["one process, whole model (CUDA graph on GPU)"] = wall_ms(
        lambda: project_weights_(whole, l0, sp), reset, args.iters
    )
    if dist.get_rank() == 0:
        print(f"\n{args.preset}: projection to L0 {l0:g}, median of {args.iters}\n")
        print("| variant | ms |\n|---|---:|")
        for name, ms in rows.items():
            print(f"| {name} | {ms:.2f} |")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
