"""End-to-end `sparse-tf train` speed: a preset and its dense twin through the real training
loop (data, micro-batches, grad RMS, Adam, projection, logging, checkpoints), side by side.

    python benchmarks/train_speed.py --preset paper-d1024 --steps 12   # on a GPU
    python benchmarks/train_speed.py --preset tiny-cpu --steps 30      # on a CPU

    python benchmarks/train_speed.py --preset paper-d1024 --modes none default graphs

Each variant trains `--steps` steps (its schedules squeezed into them, so the last half runs at
the target L0) into a temporary folder; the table gives the median step time and tokens/s over
the second half of the steps, the host time per step spent reading batches from the store
(`perf/data_ms`: the most a step can wait on data), the peak GPU memory, and the ratio to the
dense twin run the same way and to the eager dense twin. Modes: `none` (eager), `default`
(`--compile default`), `graphs` (`--cuda-graphs`: each micro-batch's forward and backward
replayed as a CUDA graph).
Variants alternate `--repeats` times so that machine noise hits all alike. A compiled or
graphed run's first steps include compilation or capture; the median over the second half does
not.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from sparse_tf import DataConfig, RunOptions, preset, train
from sparse_tf.log import read_metrics
from sparse_tf.presets import dense_twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny-cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-source", default=None, help="default: the preset's")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["none"],
        choices=["none", "default", "graphs"],
        help="run each variant eagerly (none), compiled (default) and/or with CUDA graphs",
    )
    args = parser.parse_args()

    sparse = dataclasses.replace(preset(args.preset), max_steps=args.steps)
    if args.data_source:
        sparse = dataclasses.replace(sparse, data=DataConfig(source=args.data_source))
    variants = {"sparse": sparse, "dense": dense_twin(sparse)}
    tokens_per_step = sparse.batch_size * sparse.model.n_ctx
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in args.modes:
                for name, cfg in variants.items():
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    out = Path(tmp) / f"{name}-{mode}-{repeat}"
                    opts = RunOptions(
                        out=str(out),
                        device=args.device,
                        wandb="disabled",
                        progress="none",
                        log_every=1,
                        eval_every=0,
                        ckpt_every=args.steps,
                        keep_last=1,
                        compile="default" if mode == "default" else "none",
                        cuda_graphs=mode == "graphs",
                    )
                    try:
                        result = train(cfg, opts)
                    except Exception as e:  # a mode that fails is a result to report
                        print(f"{name} {mode}: failed: {type(e).__name__}: {e}"[:400], flush=True)
                        continue
                    records = [r for r in read_metrics(out) if "perf/step_ms" in r]
                    late = records[len(records) // 2 :]
                    ms = statistics.median(r["perf/step_ms"] for r in late)
                    data_ms = statistics.median(r["perf/data_ms"] for r in late)
                    mem = max((r.get("perf/gpu_mem_gib", 0.0) for r in records), default=0.0)
                    val = result.summary["val_loss"]
                    rows.append((repeat, mode, name, ms, data_ms, mem, val))
    dense_ms = {(r, mode): ms for r, mode, name, ms, *_ in rows if name == "dense"}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{args.preset}, {args.steps} steps, {tokens_per_step:,} tokens/step, {device}")
    print(
        "| run | mode | variant | ms/step | tokens/s | data ms/step | peak GPU GiB | val loss "
        "| vs dense, same mode | vs dense eager |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for repeat, mode, name, ms, data_ms, mem, val in rows:
        eager = dense_ms.get((repeat, "none"))
        twin = dense_ms.get((repeat, mode))
        vs_eager = f"{eager / ms:.2f}x" if eager is not None else "-"
        vs_twin = f"{twin / ms:.2f}x" if twin is not None else "-"
        print(
            f"| {repeat + 1} | {mode} | {name} | {ms:.1f} | {tokens_per_step / ms * 1000:,.0f} | "
            f"{data_ms:.2f} | {mem:.1f} | {val:.3f} | {vs_twin} | {vs_eager} |"
        )


if __name__ == "__main__":
    main()
