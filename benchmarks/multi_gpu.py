"""Multi-GPU scaling of `sparse-tf train`: tokens/s and loss at 1, 2, 4 GPUs, DDP and FSDP.

    python benchmarks/multi_gpu.py --gpus 1 2 4 --dist ddp fsdp --steps 60 \
        --data-source /path/to/corpus

Every variant is the real command a user runs (`torchrun --standalone --nproc-per-node N -m
sparse_tf.cli train --preset paper-d1024 --dist D ...`), on the first N GPUs, with the same
config and seed: the same global batch (512 x 256 tokens), schedules squeezed into `--steps`
with the weights at the target L0 from the first step. tokens/s is the mean over the log
windows after the first (which holds start-up, autotuning and the first projection); the loss
columns compare each variant's training loss at the last step and its full validation loss
with the first variant's (the same model trained on one GPU, when `--gpus` starts with 1);
`--noise` adds that variant with another seed, to show how far apart two equally good runs
end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_variant(
    gpus: int, dist: str, seed: int, args: argparse.Namespace, out: Path
) -> dict[str, float]:
    flags = [
        "--preset", args.preset, "--max-steps", str(args.steps), "--dist", dist,
        "--seed", str(seed),
        "--sparsity.anneal-start", "0", "--sparsity.anneal-end", "0",
        "--log-every", str(args.log_every), "--eval-every", "0", "--ckpt-every",
        str(args.steps), "--wandb", "disabled", "--progress", "none", "--out", str(out),
    ]  # fmt: skip
    if args.data_source:
        flags += ["--data.source", args.data_source]
    flags += shlex.split(args.flags)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(gpus), "-m", "sparse_tf.cli", "train", *flags,
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{gpus} GPU(s) {dist}: exit {done.returncode}\n{done.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "perf/tokens_per_s" in r][1:]  # the first warms up
    if not windows:
        sys.exit(f"--steps {args.steps} / --log-every {args.log_every}: need two log windows")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "tokens_per_s": sum(r["perf/tokens_per_s"] for r in windows) / len(windows),
        "step_ms": sum(r["perf/step_ms"] for r in windows) / len(windows),
        "loss": [r for r in records if "train/loss" in r][-1]["train/loss"],
        "val_loss": summary["val_loss"],
        "mem_gib": max(r.get("perf/gpu_mem_gib", 0.0) for r in windows),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper-d1024")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dist", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--data-source", default=None, help="default: the preset's")
    parser.add_argument(
        "--flags", default="", help="more `sparse-tf train` flags for every variant, quoted"
    )
    parser.add_argument(
        "--noise",
        action="store_true",
        help="also train the first variant with seed 1 (another init and data order): how far "
        "apart two equally good runs end, the yardstick for the loss differences",
    )
    args = parser.parse_args()

    variants = [(1, "ddp", 0)] if 1 in args.gpus else []  # one process: --dist does not apply
    variants += [(g, d, 0) for g in args.gpus if g > 1 for d in args.dist]
    if args.noise:
        variants.append((*variants[0][:2], 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus, dist, seed in variants:
            result = run_variant(gpus, dist, seed, args, Path(tmp) / f"{gpus}-{dist}-{seed}")
            rows.append((gpus, dist, seed, result))
            print(f"# {gpus} GPU(s) {dist} seed {seed}: {result}", flush=True)
    base = rows[0][3]
    print(
        f"\n{args.preset} {args.flags}, {args.steps} steps at the target L0, tokens/s over "
        f"steps {args.log_every + 1}-{args.steps}\n"
    )
    print(
        "| GPUs | mode | tokens/s | vs first | step ms | loss at last step | Δ | val loss | Δ "
        "| peak GiB/GPU |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for gpus, dist, seed, r in rows:
        mode = dist.upper() if gpus > 1 else "one process"
        mode += f", seed {seed}" if seed else ""
        print(
            f"| {gpus} | {mode} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['step_ms']:.1f} | "
            f"{r['loss']:.4f} | {r['loss'] - base['loss']:+.4f} | {r['val_loss']:.4f} | "
            f"{r['val_loss'] - base['val_loss']:+.4f} | {r['mem_gib']:.1f} |"
        )


if __name__ == "__main__":
    main()
