"""Where an eager training step's host time goes: its Python, by where the code lives.

    python benchmarks/step_host.py --device cuda --d-model 1024 --n-layer 8 --n-ctx 256 \
        --batch 64 --bf16 --l0 0.015625            # the paper shape on a GPU
    python benchmarks/step_host.py                 # CPU, the tiny shape

`step_speed.py` gives a step's host time (until its Python returned, its kernels queued) and
`step_gaps.py` how long the GPU waits for it. This one says which Python that time is spent
in. For dense and for sparse_tf at each --l0: --warmup eager steps, then --steps timed without
any profiler (host ms and the whole step's ms, medians), then --steps more under cProfile,
back to back as training runs them (the device synchronised only before and after). From the
profile, per step:

  by where   the self time of every function, summed by where its code lives: sparse_tf's
             kernels/ and the rest of sparse_tf, triton's Python, torch's Python, built-in (C)
             functions (torch's: its operators, the autograd engine, an autograd Function's
             C apply; triton's launcher; Python's own), and other Python (the standard
             library, this benchmark); with each sparse variant's difference from dense;
  by call    the cumulative time of each call `eager_step` makes (autocast, the forward, the
             loss, backward, the optimizer step, zero_grad);
  counts     Triton kernel launches (calls of `JITFunction.run`; none on a CPU, where the
             sparse model takes the pure-torch reference path), autograd Function applies
             (forward and backward), nn.Module calls (`_call_impl`), and the calls that can
             wait for the device (`synchronize`, `item`, `tolist`, `cpu`,
             `_local_scalar_dense`), each listed by its caller (on a CPU tensor they do not
             wait); on CUDA, one more step with `torch.cuda.set_sync_debug_mode("warn")`
             gives the lines where the step does wait: a step that waits on the device
             within itself shows it here; and all function calls;
  top        the --top functions by self time, with calls, self and cumulative µs.

cProfile slows Python code several-fold, and the more so where calls are many and short, so
the profiled milliseconds are larger than the unprofiled host ms: read the split and the
differences from the profile, and absolute time from the unprofiled host ms. Operators written
as Python syntax (`a + b`, `x[i]`) reach torch through slots that cProfile does not see as
calls: their time is the self time of the function whose line runs them (a sparse_tf row holds
the torch work its lines do that way). On a CPU every operator computes before it returns, so
the split there is of compute, not of launch overhead. On a GPU, autograd runs the backward of
CUDA tensors on a device thread of its own: cProfile sees that thread's Python (our autograd
Functions' backward) on Python >= 3.12, whose profiler hooks fire in every thread (the calling
thread waits in the engine's `run_backward` meanwhile, so that thread's calls count as calls
under it); on older Pythons that time shows only as the self time of `run_backward`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import re
import statistics
import sys
import sysconfig
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.autograd.function as autograd_function
from step_gaps import eager_step  # benchmarks/step_gaps.py
from step_speed import add_shape_args, build  # benchmarks/step_speed.py

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])

Key = tuple[str, int, str]  # pstats' key of a function: (file, first line, name)
# pstats' row of a function: primitive (non-recursive) calls, all calls, self time, cumulative
# time (s), and its callers, each with (all calls, primitive calls, self, cumulative) from it.
Row = tuple[int, int, float, float, dict[Key, tuple[int, int, float, float]]]

# Where code lives, in the order of the table. A function's self time goes to one of these.
WHERE = (
    "sparse_tf/kernels/",
    "sparse_tf, other modules",
    "triton (Python)",
    "torch (Python)",
    "built-in: torch",
    "built-in: triton",
    "built-in: other",
    "other Python",
)
# Built-in (C) functions have no file; their names say whose they are. torch's carry its
# module (`<built-in method torch._C._nn.linear>`, `<method 'add_' of 'torch._C.TensorBase'
# objects>`, `_VariableFunctionsClass`), except the C apply of an autograd Function, which
# cProfile names `<built-in method apply>`. Triton's launcher is a compiled module of its own
# (`__triton_launcher` or `cuda_utils`, by version).
_TORCH_BUILTIN = re.compile(r"torch|_VariableFunctionsClass|^<built-in method apply>$")
_TRITON_BUILTIN = re.compile(r"triton|cuda_utils")
# Built-ins that wait for the device when called on a CUDA tensor (cProfile cannot tell a CUDA
# tensor from a CPU one: the callers listed with the counts can).
SYNCS = frozenset(
    {"synchronize", "_cuda_synchronize", "item", "tolist", "cpu", "_local_scalar_dense"}
)
_BUILTIN_NAME = re.compile(r"^<method '(\w+)' of|^<built-in method (?:[\w.]+\.)?(\w+)>$")


def short_path(file: str) -> str:
    """A source file relative to site-packages, the repo or the standard library; other names
    (`~`, `<frozen os>`, `<string>`) as they are."""
    for packages in ("/site-packages/", "/dist-packages/"):
        if packages in file:
            return file.rsplit(packages, 1)[1]
    for base in (ROOT, STDLIB):
        try:
            return Path(file).relative_to(base).as_posix()
        except ValueError:
            pass
    return file


def label(key: Key) -> str:
    """A function as the tables name it: `file:line name`, a built-in by its name in braces
    (as pstats prints them)."""
    file, line, name = key
    if file == "~":
        return "{" + name[1:-1] + "}" if name.startswith("<") else name
    return f"{short_path(file)}:{line} {name}"


def where(key: Key, stats: dict[Key, Row], depth: int = 0) -> str:
    """Which row of `WHERE` a function's self time goes to. Paths are taken relative to
    site-packages or the repo first, so that a checkout or virtual environment whose own path
    happens to name a package (a virtual environment inside a folder named `torch`, say) does
    not decide it."""
    file, _, name = key
    if file == "~":
        if _TRITON_BUILTIN.search(name):
            return "built-in: triton"
        return "built-in: torch" if _TORCH_BUILTIN.search(name) else "built-in: other"
    if file == "<string>" and depth < 4:
        # Code generated at run time (Triton's argument binder, a dataclass's __init__) counts
        # where the caller that spent the most in it does.
        callers = stats[key][4]
        if callers:
            caller = max(callers, key=lambda c: callers[c][3])
            return where(caller, stats, depth + 1)
    path = short_path(file)
    if path.startswith("sparse_tf/kernels/"):
        return "sparse_tf/kernels/"
    top = path.split("/", 1)[0]
    return {
        "sparse_tf": "sparse_tf, other modules",
        "triton": "triton (Python)",
        "torch": "torch (Python)",
    }.get(top, "other Python")


def code_key(fn: Callable[..., object]) -> Key:
    code = fn.__code__
    return (code.co_filename, code.co_firstlineno, code.co_name)


def counted_functions() -> dict[str, set[Key]]:
    """The functions whose calls the counts table gives, by row, found by their code objects
    (two functions named `apply` in one file: the forward's and the backward's)."""
    out = {
        "Triton launches (JITFunction.run)": set(),
        "autograd Function applies (forward)": {
            code_key(autograd_function.Function.apply.__func__)  # a classmethod
        },
        "autograd Function backwards": {code_key(autograd_function.BackwardCFunction.apply)},
        "nn.Module calls (_call_impl)": {code_key(torch.nn.Module._call_impl)},
    }
    launches = out["Triton launches (JITFunction.run)"]
    # triton is optional (without it nothing is launched), and each entry point is looked up
    # on its own, so that a version without one still counts the other.
    with contextlib.suppress(ImportError, AttributeError):
        from triton.runtime import jit

        launches.add(code_key(jit.JITFunction.run))
    with contextlib.suppress(ImportError, AttributeError):
        from triton.runtime import interpreter

        launches.add(code_key(interpreter.InterpretedFunction.run))  # TRITON_INTERPRET=1
    return out


def sync_name(key: Key) -> str | None:
    """The name of a torch built-in that waits for the device, else None."""
    file, _, name = key
    if file != "~" or not _TORCH_BUILTIN.search(name):
        return None
    match = _BUILTIN_NAME.match(name)
    bare = match and (match.group(1) or match.group(2))
    return bare if bare in SYNCS else None


@dataclass
class Profiled:
    """One variant's timings (s) and its profile of `steps` steps."""

    name: str
    host: list[float] = field(default_factory=list)  # until eager_step returned
    full: list[float] = field(default_factory=list)  # until the device finished
    profiled_wall: float = 0.0  # the profiled steps, all of them
    stats: dict[Key, Row] = field(default_factory=dict)
    callees: dict[Key, tuple[int, int, float, float]] = field(default_factory=dict)
    cuda_syncs: Counter[str] | None = None  # by the Python line that called them; CUDA only

    def self_time(self) -> dict[Key, float]:
        return {k: row[2] for k, row in self.stats.items()}

    def by_where(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for key, tt in self.self_time().items():
            out[where(key, self.stats)] += tt
        return out

    def calls(self, keys: set[Key]) -> int:
        return sum(self.stats[k][1] for k in keys if k in self.stats)  # recursive ones too


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(args: argparse.Namespace, l0: float | None, tokens: torch.Tensor) -> Profiled:
    """Warm-up, timed and profiled steps of one variant."""
    device = tokens.device
    model, opt = build(args, l0, args.warmup + 2 * args.steps + 1)
    out = Profiled("dense" if l0 is None else f"sparse_tf 1/{round(1 / l0)}")
    for _ in range(args.warmup):
        eager_step(model, opt, tokens, args.bf16)
        sync(device)
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        eager_step(model, opt, tokens, args.bf16)
        issued = time.perf_counter()
        sync(device)
        out.host.append(issued - start)
        out.full.append(time.perf_counter() - start)

    sync(device)  # the steps before must not leak into the profile, nor the waits for them
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(args.steps):
        eager_step(model, opt, tokens, args.bf16)
    profiler.disable()
    out.profiled_wall = time.perf_counter() - start
    sync(device)

    stats = pstats.Stats(profiler)
    out.stats = {  # the profiler's own `disable`, the last call it sees, is not the step's
        k: row
        for k, row in stats.stats.items()  # type: ignore[attr-defined]  # documented, untyped
        if "_lsprof.Profiler" not in k[2]
    }
    stats.calc_callees()
    out.callees = stats.all_callees.get(code_key(eager_step), {})  # type: ignore[attr-defined]
    if device.type == "cuda":
        out.cuda_syncs = cuda_syncs(lambda: eager_step(model, opt, tokens, args.bf16))
    return out


def cuda_syncs(step: Callable[[], None]) -> Counter[str]:
    """Where one more step synchronises with the GPU, as torch's sync debug mode reports it
    (every operation that waits for the device, `item`, `nonzero`, a copy to the host, ...): by
    the Python line that called the operation, which cProfile's names cannot tell (`item` of a
    CPU tensor does not wait)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every one, not once per line
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return Counter(
        f"{short_path(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )


def _count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def print_where(runs: list[Profiled], steps: int) -> None:
    print("\nHost time by where the code lives (self time under cProfile, ms per step)")
    header = "| where |"
    for r in runs:
        header += f" {r.name} ms | {r.name} % |" + ("" if r is runs[0] else f" {r.name} - dense |")
    print(header)
    print("|---|" + "---|" * (header.count("|") - 2))
    split = [r.by_where() for r in runs]
    totals = [sum(s.values()) for s in split]
    for row in (*WHERE, "total"):
        cells = []
        for i, s in enumerate(split):
            ms = (totals[i] if row == "total" else s.get(row, 0.0)) * 1e3 / steps
            base = (totals[0] if row == "total" else split[0].get(row, 0.0)) * 1e3 / steps
            pct = 100 * ms / (totals[i] * 1e3 / steps) if totals[i] else 0.0
            cells += [f"{ms:.2f}", f"{pct:.1f}"] + ([] if i == 0 else [f"{ms - base:+.2f}"])
        print(f"| {row} | " + " | ".join(cells) + " |")


# What the functions eager_step calls (benchmarks/step_gaps.py) stand for, by their names.
STEP_CALLS = {
    "_wrapped_call_impl": "model(tokens): the forward",
    "lm_loss": "lm_loss",
    "backward": "loss.backward()",
    "decorate_context": "opt.step() (its no_grad wrapper)",
    "step": "opt.step()",
    "zero_grad": "opt.zero_grad()",
}


def step_call(key: Key) -> str:
    if short_path(key[0]).startswith("torch/amp/"):
        return "autocast"
    return STEP_CALLS.get(key[2], "-")


def print_calls_from_step(runs: list[Profiled], steps: int) -> None:
    """The cumulative time of each call eager_step makes, and eager_step's own lines: together
    the profiled total."""
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * len(runs))
    for i, r in enumerate(runs):
        for callee, (_, _, _, ct) in r.callees.items():
            rows[(step_call(callee), f"`{label(callee)}`")][i] += ct * 1e3 / steps
        own = r.stats.get(code_key(eager_step))
        rows[("its own lines", "-")][i] += (own[2] if own else 0.0) * 1e3 / steps
    print("\nHost time by the call eager_step makes (cumulative under cProfile, ms per step)")
    print("| in eager_step | function | " + " | ".join(r.name for r in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for (call, function), cells in sorted(rows.items(), key=lambda kv: -kv[1][-1]):
        print(f"| {call} | {function} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def print_counts(runs: list[Profiled], steps: int) -> None:
    print("\nCalls per step")
    print("| count | " + " | ".join(r.name for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    counted = counted_functions()
    for row, keys in counted.items():
        print(f"| {row} | " + " | ".join(_count(r.calls(keys) / steps) for r in runs) + " |")
    syncs = [{k for k in r.stats if sync_name(k)} for r in runs]
    cells = [_count(r.calls(keys) / steps) for r, keys in zip(runs, syncs, strict=True)]
    names = ", ".join(sorted(SYNCS))
    print(f"| device synchronisations (calls of {names}) | " + " | ".join(cells) + " |")
    cells = [_count(sum(row[1] for row in r.stats.values()) / steps) for r in runs]
    print("| function calls, all | " + " | ".join(cells) + " |")
    for r, keys in zip(runs, syncs, strict=True):  # on a CPU tensor these do not wait
        for key in sorted(keys):
            for caller, (nc, *_) in r.stats[key][4].items():
                per_step = _count(nc / steps)
                print(f"  {r.name}: {label(key)} {per_step}x per step from {label(caller)}")
    for r in runs:
        if r.cuda_syncs is None:
            continue
        found = ", ".join(f"{line} ({n}x)" for line, n in r.cuda_syncs.most_common())
        print(f"  {r.name}: CUDA synchronisations in one more step (torch.cuda.set_sync_debug_mode)"
              f": {found or 'none'}")  # fmt: skip


def print_top(run: Profiled, steps: int, top: int) -> None:
    print(f"\n{run.name}: the top {top} functions by self time (under cProfile, per step)")
    print("| function | where | calls | self µs | cum µs |")
    print("|---|---|---|---|---|")
    spent = [(k, tt) for k, tt in run.self_time().items() if tt > 0]
    ranked = sorted(spent, key=lambda kv: -kv[1])[:top]
    for key, tt in ranked:
        _, nc, _, ct, _ = run.stats[key]
        print(
            f"| `{label(key)}` | {where(key, run.stats)} | {_count(nc / steps)} | "
            f"{tt * 1e6 / steps:.0f} | {ct * 1e6 / steps:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(parser)  # --warmup among them (default 3)
    parser.add_argument("--steps", type=int, default=5, help="timed, then profiled, steps")
    parser.add_argument("--top", type=int, default=25, help="functions listed per variant")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps: at least 1")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()}"
    python = ".".join(map(str, sys.version_info[:3]))
    print(f"{name}, torch {torch.__version__}, Python {python}")
    print(f"shape: {args.n_layer} layers, d_model {args.d_model}, vocab {args.vocab_size}, "
          f"batch {args.batch} x {args.n_ctx}, bf16 {args.bf16}; {args.warmup} warm-up, "
          f"{args.steps} timed and {args.steps} profiled eager steps per variant")  # fmt: skip
    tokens = torch.randint(0, args.vocab_size, (args.batch, args.n_ctx), device=device)
    runs = [run_variant(args, l0, tokens) for l0 in (None, *args.l0)]

    print("\nUnprofiled (medians), and the profiled steps' host time")
    print("| variant | host ms | ms/step | profiled host ms | cProfile slowdown |")
    print("|---|---|---|---|---|")
    for r in runs:
        host = statistics.median(r.host) * 1e3
        profiled = r.profiled_wall * 1e3 / args.steps
        print(f"| {r.name} | {host:.2f} | {statistics.median(r.full) * 1e3:.2f} | "
              f"{profiled:.2f} | {profiled / host:.1f}x |")  # fmt: skip
    print(
        "\nnote: cProfile slows Python several-fold (most where calls are many and short), so"
        "\nthe profiled ms below exceed the unprofiled host ms: read the split and the"
        "\ndifferences there, absolute time above. Operators written as syntax (`a + b`, `x[i]`)"
        "\nare no calls to cProfile: their time is the self time of the function on that line."
    )
    if cuda and sys.version_info < (3, 12):
        print(
            "note: Python < 3.12: cProfile sees the calling thread only, so the Python of the "
            "backward\n(on autograd's device thread) counts as self time of `run_backward`."
        )
    print_where(runs, args.steps)
    print_calls_from_step(runs, args.steps)
    print_counts(runs, args.steps)
    for r in runs:
        print_top(r, args.steps, args.top)


if __name__ == "__main__":
    main()
