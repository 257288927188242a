"""Where a training step's GPU time goes: dense vs sparse_tf, by phase and kind of kernel.

    python benchmarks/step_profile.py --device cuda --d-model 1024 --n-layer 8 --n-ctx 256 \
        --batch 64 --bf16 --l0 0.015625            # the paper shape on a GPU
    python benchmarks/step_profile.py              # CPU, the tiny shape (operator self time)

Each variant (dense, then sparse_tf at each --l0) takes --warmup steps, then --steps profiled
steps; forward (with the loss), backward and the optimizer step are profiled apart, so every
kernel is charged to its phase. Kernels are grouped by name into kinds (matmul, attention,
AbsTopK forward and backward, projection, sparse matmul, norms, Adam, ...); the table gives
milliseconds per step per phase and kind, and the largest kernels of each variant follow.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict

import torch
from step_speed import add_shape_args, build  # benchmarks/step_speed.py
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from sparse_tf import GPT, SparseOptimizer, lm_loss

_PROJECTION = (
    r"_keys_kernel|_digit_histogram|_pick_digit|_count_ties|_zero_dropped|_keep_kernel|"
    r"_decide_kernel|_candidate_ties|_update_warm|_protected_keys"
)
KINDS: list[tuple[str, str]] = [  # first match wins; patterns on the kernel (or operator) name
    ("norm + abstopk fwd", r"_norm_abstopk_fwd"),  # RMSNorm fused in: dense has its norm
    ("norm + abstopk bwd", r"_norm_abstopk_bwd"),
    ("abstopk fwd", r"_abstopk_fwd"),
    ("abstopk bwd", r"_abstopk_bwd"),
    ("projection", _PROJECTION),
    ("sparse matmul", r"_spmm|_csr_|_transpose_kernel"),
    ("attention", r"flash|fmha|attention|sdpa|efficient"),
    ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|sm90_|sm80_|matmul|addmm|\bmm\b|linear"),
    ("norm", r"rms|norm"),
    ("adam", r"adam"),
    ("loss/softmax", r"softmax|nll|cross_entropy"),
    ("reduce/foreach", r"reduce|foreach|multi_tensor"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other (elementwise, copies)"


def device_times(prof: profile, cuda: bool) -> dict[str, float]:
    """Kernel (CUDA) or operator self time (CPU) in microseconds, by name."""
    out: dict[str, float] = defaultdict(float)
    if cuda:
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                out[e.name] += e.time_range.end - e.time_range.start
    else:
        for e in prof.key_averages():
            out[e.key] += e.self_cpu_time_total
    return out


def run_phase(
    phase: str,
    model: GPT,
    opt: SparseOptimizer,
    tokens: torch.Tensor,
    state: dict[str, torch.Tensor],
    bf16: bool,
) -> None:
    """One phase of a training step (the loss passes from forward to backward in `state`)."""
    if phase == "forward":
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
            state["loss"] = lm_loss(model(tokens), tokens)
    elif phase == "backward":
        state.pop("loss").backward()
    else:
        opt.step()
        opt.zero_grad()
    if tokens.is_cuda:
        torch.cuda.synchronize()


def kind_ms(per_phase: dict[str, dict[str, float]], phase: str, kinds: tuple[str, ...]) -> float:
    """Milliseconds per step of the kernels of `kinds` in `phase`."""
    return sum(us for k, us in per_phase[phase].items() if kind_of(k) in kinds) / 1e3


def print_bounds(results: dict[str, dict[str, dict[str, float]]], phases: tuple[str, ...]) -> None:
    """How fast each sparse variant's step could be if its forward and input-gradient products
    cost nothing, with the weight gradient kept dense (it must be: weights outside the kept set
    have to be able to re-enter). The dense step's backward products are the input and the
    weight gradients of every matrix, equal in FLOPs, so half of them is the weight gradient's
    cost; the sparse step keeps that half and everything that is not a product (attention,
    AbsTopK, norms, Adam, the projection). The dense step over this floor is the most any
    faster product can make the step gain."""
    if "dense" not in results:
        return
    products = ("matmul", "sparse matmul")
    dense = results["dense"]
    dense_all = sum(sum(dense[p].values()) for p in phases) / 1e3
    weight_grad = kind_ms(dense, "backward", ("matmul",)) / 2
    print("\nThe floor of each sparse step: its products free, the weight gradient dense")
    print("| variant | step | products (fwd + bwd) | floor | dense / step | dense / floor |")
    print("|---|---|---|---|---|---|")
    for name, per_phase in results.items():
        if name == "dense":
            continue
        step = sum(sum(per_phase[p].values()) for p in phases) / 1e3
        used = kind_ms(per_phase, "forward", products) + kind_ms(per_phase, "backward", products)
        floor = step - used + weight_grad
        print(
            f"| {name} | {step:.2f} | {used:.2f} | {floor:.2f} | {dense_all / step:.2f}x "
            f"| {dense_all / floor:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(parser)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--top", type=int, default=12, help="largest kernels listed per variant")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    os.environ.setdefault("SPARSE_TF_KERNELS", "auto")
    tokens = torch.randint(0, args.vocab_size, (args.batch, args.n_ctx), device=device)
    phases = ("forward", "backward", "optimizer")
    results: dict[str, dict[str, dict[str, float]]] = {}  # variant -> phase -> name -> us
    for l0 in [None, *args.l0]:
        name = "dense" if l0 is None else f"sparse_tf 1/{round(1 / l0)}"
        model, opt = build(args, l0, args.warmup + args.steps)
        per_phase: dict[str, dict[str, float]] = {p: defaultdict(float) for p in phases}
        for step in range(args.warmup + args.steps):
            state: dict[str, torch.Tensor] = {}
            for phase in phases:
                if step < args.warmup:
                    run_phase(phase, model, opt, tokens, state, args.bf16)
                    continue
                activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
                with profile(activities=activities) as prof:
                    run_phase(phase, model, opt, tokens, state, args.bf16)
                for kernel, us in device_times(prof, cuda).items():
                    per_phase[phase][kernel] += us / args.steps
        results[name] = per_phase

    where = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}"
    print(f"{where}, torch {torch.__version__}")
    print(
        f"shape: {args.n_layer} layers, d_model {args.d_model}, vocab {args.vocab_size}, "
        f"batch {args.batch} x {args.n_ctx}, bf16 {args.bf16}; ms per step "
        f"({'GPU kernel time' if cuda else 'operator self time'})"
    )
    kinds = [k for k, _ in KINDS] + ["other (elementwise, copies)"]
    names = list(results)
    print("| phase | kind | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for phase in phases:
        for kind in kinds:
            cells = [
                sum(us for k, us in results[n][phase].items() if kind_of(k) == kind) / 1e3
                for n in names
            ]
            if any(c >= 0.005 for c in cells):
                print(f"| {phase} | {kind} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        totals = [sum(results[n][phase].values()) / 1e3 for n in names]
        print(f"| {phase} | **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    grand = [sum(sum(results[n][p].values()) for p in phases) / 1e3 for n in names]
    print("| step | **all** | " + " | ".join(f"**{t:.2f}**" for t in grand) + " |")
    print_bounds(results, phases)
    for n in names:
        merged: dict[tuple[str, str], float] = defaultdict(float)
        for phase in phases:
            for kernel, us in results[n][phase].items():
                merged[(phase, kernel)] += us
        print(f"\n{n}: largest kernels (ms per step)")
        for (phase, kernel), us in sorted(merged.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {us / 1e3:7.3f}  {phase:9s} {kind_of(kernel):14s} {kernel[:90]}")


if __name__ == "__main__":
    main()
