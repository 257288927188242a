"""Where an eager training step's GPU waits for the host: idle time between its kernels.

    python benchmarks/step_gaps.py --device cuda --d-model 1024 --n-layer 8 --n-ctx 256 \
        --batch 64 --bf16 --l0 0.015625            # the paper shape on a GPU

`step_speed.py` gives a step's wall clock and `step_profile.py` its kernel time (phases
profiled apart, so the gaps between them are not the step's own). This one profiles --steps
whole eager steps back to back, as training runs them, and splits their span on the GPU into
busy time (the union of the kernels' intervals) and idle time: the time the GPU had nothing
queued because the host had not yet issued the next launch. For dense and for sparse_tf at
each --l0: span, busy and idle ms per step and kernels per step; the idle time by the kernel
that waited (the first kernel after each gap); and the largest single gaps with the kernels
on both sides.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from step_speed import add_shape_args, build  # benchmarks/step_speed.py
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from sparse_tf import GPT, SparseOptimizer, lm_loss


@dataclass
class Gaps:
    """A profiled stretch of GPU time: its span and busy time (us), the idle time before each
    kernel name (us) and how many gaps that was, and every gap as (us, before, after)."""

    span: float = 0.0
    busy: float = 0.0
    idle_before: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count_before: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gaps: list[tuple[float, str, str]] = field(default_factory=list)


def gaps(intervals: list[tuple[float, float, str]]) -> Gaps:
    """Busy and idle time of kernels given as (start, end, name) in any order; kernels that
    overlap (several streams) count once."""
    out = Gaps()
    if not intervals:
        return out
    intervals = sorted(intervals)
    out.span = max(end for _, end, _ in intervals) - intervals[0][0]
    reached, before = intervals[0][0], ""  # the latest end so far, and that kernel's name
    for start, end, name in intervals:
        if start > reached:
            out.idle_before[name] += start - reached
            out.count_before[name] += 1
            out.gaps.append((start - reached, before, name))
        out.busy += max(0.0, end - max(start, reached))
        if end > reached:
            reached, before = end, name
    return out


def eager_step(model: GPT, opt: SparseOptimizer, tokens: torch.Tensor, bf16: bool) -> None:
    """One training step as the trainer runs it eagerly (no synchronisation)."""
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = lm_loss(model(tokens), tokens)
    loss.backward()
    opt.step()
    opt.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(parser)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--top", type=int, default=8, help="rows of each list")
    args = parser.parse_args()
    if args.device != "cuda":
        parser.error("--device cuda: the gaps are the GPU's")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"{args.n_layer} layers, d_model {args.d_model}, batch {args.batch} x {args.n_ctx}, "
          f"bf16 {args.bf16}; {args.steps} eager steps back to back")  # fmt: skip
    for l0 in (None, *args.l0):
        model, opt = build(args, l0, 100)
        tokens = torch.randint(0, args.vocab_size, (args.batch, args.n_ctx), device="cuda")

        for _ in range(args.warmup):
            eager_step(model, opt, tokens, args.bf16)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                eager_step(model, opt, tokens, args.bf16)
            torch.cuda.synchronize()
        g = gaps(
            [
                (e.time_range.start, e.time_range.end, e.name)
                for e in prof.events()
                if e.device_type == DeviceType.CUDA
            ]
        )
        n = args.steps * 1e3  # us in all -> ms per step
        kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA) / args.steps
        name = "dense" if l0 is None else f"sparse_tf 1/{round(1 / l0)}"
        print(f"\n{name}: span {g.span / n:.2f} ms per step, busy {g.busy / n:.2f}, idle "
              f"{(g.span - g.busy) / n:.2f}; {kernels:.0f} kernels per step")  # fmt: skip
        print("| idle before (the kernel that waited) | ms per step | gaps per step |")
        print("|---|---|---|")
        top = sorted(g.idle_before.items(), key=lambda kv: -kv[1])[: args.top]
        for kernel, idle in top:
            per_step = g.count_before[kernel] / args.steps
            print(f"| {kernel[:70]} | {idle / n:.3f} | {per_step:.0f} |")
        print("| largest gaps (ms) | the kernel before | the kernel that waited |")
        print("|---|---|---|")
        for us, before, after in sorted(g.gaps, reverse=True)[: args.top]:
            print(f"| {us / 1e3:.3f} | {before[:50]} | {after[:50]} |")


if __name__ == "__main__":
    main()
