"""Training-step speed: the sparse recipe vs its dense twin and a naive path, same shape.

    python benchmarks/step_speed.py                       # CPU, the tiny shape
    python benchmarks/step_speed.py --device cuda --d-model 1024 --n-layer 8 --n-ctx 256 \
        --batch 64 --bf16 --l0 0.015625 0.0009765625 --compile    # paper shape on a GPU

A step is forward + backward + SparseOptimizer.step (grad RMS, Adam, projection, decay). Sparse
runs sit at their target L0 (no anneal) so every step projects; AbsTopK is on at the 8 sites.
Variants, for each --l0:

  sparse_tf   this library as it runs by default (Triton kernels on CUDA, the projection
              replayed as one CUDA graph, the sparse matmul where the measured crossovers
              say it beats cuBLAS);
  no-spmm     the same with every matmul on cuBLAS (masked dense weights; CUDA only);
  eager-proj  the same with the projection launched op by op (SPARSE_TF_CUDA_GRAPHS=0; CUDA
              only, first L0 only);
  naive       masked dense weights with `torch.topk` for AbsTopK and the projection
              (SPARSE_TF_KERNELS=reference): what a straightforward implementation does;

and `dense`, the same model with dense weights and no AbsTopK. With --compile every variant
also runs with `torch.compile(model)` (forward and backward; the optimizer stays eager). With
--graphs (CUDA), dense and sparse_tf also run `graphed`: the eager forward and backward
captured as a CUDA graph (`torch.cuda.graph`, static inputs, gradients accumulated in place;
the sparse products as in eager, their formats refreshed before each replay, as the trainer's
`--cuda-graphs` does; the optimizer eager) and replayed every step, which removes the host's
launch time without any compiler. Steps of all variants alternate so that machine noise
hits all alike; the table gives medians and the ratio to dense (eager), and `host ms`: the
time until the step's Python has returned, its kernels queued. On a GPU, a host time close to
the step's means the host is the limit: the GPU waits for launches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, kernels, lm_loss
from sparse_tf.linear import GraphedProducts

plan = kernels.spmm_plan


def no_spmm(*args: object) -> kernels.SpmmPlan:
    return kernels.DENSE


@dataclass
class Variant:
    name: str
    l0: float | None  # None: dense
    env: dict[str, str]  # SPARSE_TF_* settings while this variant runs
    compiled: bool
    spmm: bool = True  # False: every matmul on cuBLAS
    graphed: bool = False  # forward + backward replayed as one captured CUDA graph
    times: list[float] = field(default_factory=list)
    host_times: list[float] = field(default_factory=list)  # until the step's Python returned
    failed: str | None = None  # why torch.compile or the capture could not run it

    @property
    def mode(self) -> str:
        return "graphed" if self.graphed else "compiled" if self.compiled else "eager"


def variants(l0s: list[float], cuda: bool, compile_too: bool, graphs: bool) -> list[Variant]:
    default = {"SPARSE_TF_KERNELS": "auto", "SPARSE_TF_CUDA_GRAPHS": "1"}
    out = [Variant("dense", None, default, False)]
    for i, l0 in enumerate(l0s):
        out.append(Variant("sparse_tf", l0, default, False))
        if cuda:
            out.append(Variant("no-spmm", l0, default, False, spmm=False))
        if cuda and i == 0:
            out.append(Variant("eager-proj", l0, {**default, "SPARSE_TF_CUDA_GRAPHS": "0"}, False))
        out.append(Variant("naive", l0, {**default, "SPARSE_TF_KERNELS": "reference"}, False))
    if compile_too:
        out += [
            Variant(v.name, v.l0, v.env, True, v.spmm)
            for v in out
            if v.name not in ("eager-proj", "no-spmm")
        ]
    if graphs and cuda:
        out += [
            Variant(v.name, v.l0, v.env, False, spmm=v.spmm, graphed=True)
            for v in out
            if v.name in ("dense", "sparse_tf") and not v.compiled
        ]
    return out


class GraphedStep:
    """Forward + backward of `model` on fixed tokens, captured as a CUDA graph and replayed.
    The gradients are allocated before the capture and accumulated into in place, so the
    optimizer (eager, outside the graph) reads them where the replays write them, and updates
    the parameters in place where the next replay reads them. The sparse products run as the
    eager ones do, their formats refreshed before every replay (`GraphedProducts`, as the
    trainer's `--cuda-graphs` does); the step is captured again when that cannot hold."""

    def __init__(self, model: torch.nn.Module, tokens: torch.Tensor, bf16: bool) -> None:
        self.model, self.tokens, self.bf16 = model, tokens.clone(), bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.products = GraphedProducts()
        self.captures = 0
        self._capture()

    def _capture(self) -> None:
        self.graph = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (Triton's compiles, cuBLAS handles) off-graph
            for _ in range(3):
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        self.zero_grad()
        graph = torch.cuda.CUDAGraph()
        with self.products.recording(), torch.cuda.graph(graph):
            self.loss = self._forward_backward()
        self.graph = graph
        self.captures += 1

    def _forward_backward(self) -> torch.Tensor:
        # The autocast cache must be off under capture (its casts would be freed after it).
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            loss = lm_loss(self.model(self.tokens), self.tokens)
        loss.backward()
        return loss.detach()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad.zero_()  # type: ignore[union-attr]

    def __call__(self) -> None:
        if not self.products.refresh():  # the gradients are zero here: recapture is safe
            self._capture()
        assert self.graph is not None
        self.graph.replay()


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """The model, batch and precision flags the step benchmarks share."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--l0", type=float, nargs="+", default=[1 / 64])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")


def build(
    args: argparse.Namespace, l0: float | None, total_steps: int
) -> tuple[GPT, SparseOptimizer]:
    """The model of `add_shape_args` (seed 0) and its optimizer: dense when l0 is None (no
    AbsTopK, no projection), else at L0 `l0` from the first step (no anneal)."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=args.vocab_size,
        n_ctx=args.n_ctx,
        n_layer=args.n_layer,
        d_model=args.d_model,
        afrac=None if l0 is None else 0.25,
    )
    model = GPT(cfg).to(args.device)
    sparsity = None if l0 is None else SparsityConfig(l0=l0, anneal_start=0.0, anneal_end=0.0)
    return model, SparseOptimizer(model, OptimConfig(), sparsity, total_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--compile", action="store_true", help="also torch.compile each variant")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead"],
        help="torch.compile's mode; reduce-overhead replays forward and backward as CUDA graphs",
    )
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also dense and sparse_tf with forward + backward replayed as a CUDA graph (CUDA)",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these variants (names in the table)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print the GPU kernels of one sparse_tf step"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    tokens = torch.randint(0, args.vocab_size, (args.batch, args.n_ctx), device=device)
    runs = variants(args.l0, device.type == "cuda", args.compile, args.graphs)
    if args.only:
        if "dense" not in args.only:
            parser.error("--only: include dense (every ratio is against it)")
        runs = [v for v in runs if v.name in args.only]
    total = args.warmup + args.steps + 1  # + 1: the profiled step
    models = []
    for v in runs:
        os.environ.update(v.env)  # also for the projection on construction
        model, opt = build(args, v.l0, total)
        forward = torch.compile(model, mode=args.compile_mode) if v.compiled else model
        models.append((forward, opt))

    graphed: dict[int, GraphedStep] = {}  # by variant index, captured at its first step
    for i in range(args.warmup + args.steps):
        for j, (v, (forward, opt)) in enumerate(zip(runs, models, strict=True)):
            if v.failed:
                continue
            os.environ.update(v.env)
            kernels.spmm_plan = plan if v.spmm else no_spmm
            if v.graphed and j not in graphed:
                try:
                    graphed[j] = GraphedStep(forward, tokens, args.bf16)
                except Exception as e:  # a failed capture is a result to report, not a crash
                    v.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if v.graphed:
                graphed[j]()
                opt.step()
                graphed[j].zero_grad()  # in place: the graph writes into these tensors
            else:
                if v.compiled and args.compile_mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()  # last step's outputs are free
                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                        loss = lm_loss(forward(tokens), tokens)
                    loss.backward()
                except Exception as e:  # a compiler failure is a result to report
                    if not v.compiled:
                        raise
                    v.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    opt.zero_grad()
                    continue
                opt.step()
                opt.zero_grad()
            issued = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                v.times.append(time.perf_counter() - start)
                v.host_times.append(issued - start)

    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        v, (forward, opt) = next((v, m) for v, m in zip(runs, models, strict=True) if v.l0)
        os.environ.update(v.env)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = lm_loss(forward(tokens), tokens)
            loss.backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
        print(f"one {v.name} step at L0 1/{round(1 / v.l0)}:")
        table = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=18, max_name_column_width=70
        )
        print(table)

    n_tokens = args.batch * args.n_ctx
    dense_ms = statistics.median(runs[0].times) * 1e3
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(f"{name}, torch {torch.__version__}")
    print(
        f"shape: {args.n_layer} layers, d_model {args.d_model}, vocab {args.vocab_size}, "
        f"batch {args.batch} x {args.n_ctx}, bf16 {args.bf16}"
    )
    # host ms: until the step's Python returned, its kernels queued but not all run. Near
    # ms/step, the host is the limit (or the step waits on the device within itself).
    print("| variant | L0 | mode | ms/step | host ms | tokens/s | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for v in runs:
        l0 = "dense" if v.l0 is None else f"1/{round(1 / v.l0)}"
        if v.failed:
            print(f"| {v.name} | {l0} | {v.mode} | failed: {v.failed} | | | |")
            continue
        ms = statistics.median(v.times) * 1e3
        host = statistics.median(v.host_times) * 1e3
        print(
            f"| {v.name} | {l0} | {v.mode} | {ms:.1f} | {host:.1f} | "
            f"{n_tokens / ms * 1e3:,.0f} | {dense_ms / ms:.2f}x |"
        )


if __name__ == "__main__":
    main()
