"""Median run times of GPU (or CPU) work, the way every measurement in sparse_tf is taken:
warm-up first, then the candidates alternate within every iteration so that machine noise
hits them alike; CUDA events on a GPU, the wall clock (after the work is done) elsewhere."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fns: dict[str, Callable[[], object]],
    iters: int,
    warmup: int = 3,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Median milliseconds of each function; `device` (default: CUDA when available) says
    which clock."""
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    for fn in fns.values():  # warm-up (and compilation)
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def median_ms_one(
    fn: Callable[[], object], iters: int, device: torch.device | None = None
) -> float:
    """Median milliseconds of one function (see `median_ms`)."""
    return median_ms({"fn": fn}, iters, device=device)["fn"]
