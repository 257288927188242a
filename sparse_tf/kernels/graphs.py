"""Replay a fixed sequence of GPU launches as one CUDA graph.

The per-step weight projection of a paper-size model is a few hundred small launches (keys,
per-neuron protection, radix select and masking for every matrix). Their GPU work is short;
issuing them one by one from Python is not. `graphed` captures such a sequence once and replays
it with a single launch every step. The integer arguments that change between steps (each
matrix's K during the L0 anneal) live in a device tensor that the captured kernels read, updated
by one asynchronous copy when they change.

SPARSE_TF_CUDA_GRAPHS=0 runs the sequence eagerly instead (for debugging and for comparison).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

_ENV = "SPARSE_TF_CUDA_GRAPHS"
T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get(_ENV, "1") not in ("", "0")


@dataclass
class _Graph:
    key: Hashable
    graph: torch.cuda.CUDAGraph
    ints: Tensor  # [n] int32 on the device: what the captured launches read
    last: list[int]  # its current contents


_GRAPHS: OrderedDict[Hashable, _Graph] = OrderedDict()
MAX_GRAPHS = 8
"""Captures kept at once (least recently used dropped first): one per model being trained, so
that several models in one process (a sparse and a dense run, bridges) do not recapture."""


def graphed(
    name: str,
    fn: Callable[[Tensor], object],
    ints: Sequence[int],
    tensors: Sequence[Tensor],
    static: Hashable = None,
) -> None:
    """Run `fn(k)`, where `k` is an int32 CUDA tensor holding `ints`, as a CUDA graph.

    `fn` must only launch GPU work: no host synchronisation, no reading results on the host;
    tensors it keeps beyond a call (caches) must already exist after its first, eager call.
    It works in place on `tensors` (CUDA tensors on one device), and may depend on nothing
    else but `ints` and `static`. The first call (and any
    call where `name`, the tensors' addresses, shapes or dtypes, the number of ints or
    `static` differ from every kept capture) runs `fn` once eagerly, captures it, and
    replays it, so `fn` must be idempotent; later calls with the same key only replay (the
    last `MAX_GRAPHS` keys are kept). Runs `fn` eagerly when graphs are disabled
    (SPARSE_TF_CUDA_GRAPHS=0).
    """
    device = tensors[0].device
    if not enabled():
        with torch.no_grad():
            fn(torch.tensor(list(ints), dtype=torch.int32, device=device))
        return
    key = (name, tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors), len(ints), static)
    g = _GRAPHS.get(key)
    if g is None:
        while len(_GRAPHS) >= MAX_GRAPHS:
            _GRAPHS.popitem(last=False)  # free the oldest capture's memory first
        g = _GRAPHS[key] = _capture(key, fn, list(ints), device)
    elif list(ints) != g.last:
        # From pinned memory, asynchronous: the host does not wait for the GPU. The caching
        # host allocator keeps the source alive until the copy has run.
        source = torch.tensor(list(ints), dtype=torch.int32).pin_memory()
        g.ints.copy_(source, non_blocking=True)
        g.last = list(ints)
    _GRAPHS.move_to_end(key)
    g.graph.replay()


def _capture(
    key: Hashable, fn: Callable[[Tensor], object], ints: list[int], device: torch.device
) -> _Graph:
    k = torch.tensor(ints, dtype=torch.int32, device=device)
    graph, _ = capture(lambda: fn(k), device)
    return _Graph(key, graph, k, ints)


def capture(fn: Callable[[], T], device: torch.device) -> tuple[torch.cuda.CUDAGraph, T]:
    """Capture `fn()` (GPU work only, see `graphed`) as a CUDA graph after one eager warm-up
    run; returns the graph and what `fn` returned while being captured: tensors that every
    replay refills in place.

    Every capture gets its own memory pool. A pool shared between captures is safe only if
    they replay in the order they were captured: a later capture may be handed memory that an
    earlier one freed (its temporaries), and every replay of the earlier one writes there
    again. The sparse formats' builds do not replay in capture order (a validation pass
    rebuilds the forward formats only, the next training step the dX ones), so in a shared
    pool one layer's build could overwrite another layer's finished format."""
    # Warm up on a side stream (compiles kernels, fills caches), as capture requires.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = fn()
    return graph, out


def release(tensors: Sequence[Tensor]) -> None:
    """Drop the captures that work on any of `tensors` (a model whose training has ended), and
    the memory their launches hold; the captures of other tensors stay."""
    ptrs = {t.data_ptr() for t in tensors}
    for key in [key for key in _GRAPHS if ptrs & {ptr for ptr, _, _ in key[1]}]:
        del _GRAPHS[key]


def clear() -> None:
    """Drop every captured graph (and the memory its launches hold)."""
    _GRAPHS.clear()
