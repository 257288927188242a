"""Timing helpers shared by the GPU benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def cuda_ms(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each function, timed with CUDA events; the functions alternate
    within every iteration so that machine noise hits them alike."""
    for fn in fns.values():  # warm-up (and compilation)
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_ms_one(fn: Callable[[], object], iters: int) -> float:
    """Median milliseconds of one function (see `cuda_ms`)."""
    return cuda_ms({"fn": fn}, iters)["fn"]
