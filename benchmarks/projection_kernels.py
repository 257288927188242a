"""The projection's kernels on real pre-projection weights: GPU time per kernel, and variants
of their launch shapes.

    python benchmarks/projection_kernels.py            # paper shape, on a CUDA machine

Trains --steps steps of the paper-shape model (8 layers, d_model 1024, batch 64 x 256, bf16,
L0 1/64 from the first step), captures the weights and warm-start state just before the last
projection, then replays that projection (--reps times per variant, weights and warm state
restored before each) under the profiler. For each variant: its kept sets checked against
`reference_masks`, and ms per projection by kernel. Variants: the shipped launch shapes and
the persistent passes with other numbers of programs, warm-started and cold (no warm start);
every chunk pass at 8 warps; the protected-keys kernel with more warps, at other tile
sizes (also at 4 warps).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from step_speed import add_shape_args, build  # benchmarks/step_speed.py
from torch.profiler import ProfilerActivity, profile

from sparse_tf import kernels, lm_loss
from sparse_tf.kernels import projection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps before capture")
    parser.add_argument("--reps", type=int, default=5, help="profiled projections per variant")
    args = parser.parse_args()
    os.environ["SPARSE_TF_CUDA_GRAPHS"] = "0"  # one profiler row per launch
    shape = argparse.ArgumentParser()
    add_shape_args(shape)
    model_args = shape.parse_args(
        [
            "--device",
            "cuda",
            "--d-model",
            "1024",
            "--n-layer",
            "8",
            "--n-ctx",
            "256",
            "--batch",
            "64",
            "--bf16",
        ]
    )
    model, opt = build(model_args, 1 / 64, args.steps)

    # Capture the last projection's inputs (weights before it, and the warm-start state).
    captured: dict[str, object] = {}
    project = kernels.project_

    def capture(weights: list[torch.Tensor], protections: list, ks: list, *rest: object) -> None:
        layout = projection._layout(
            tuple(w.numel() for w in weights), weights[0].device, projection.CHUNK
        )
        captured.update(
            saved=[w.detach().clone() for w in weights], protections=list(protections),
            ks=ks, warm=layout.warm.clone(), live=weights, layout=layout,
        )  # fmt: skip
        project(weights, protections, ks, *rest)

    kernels.project_ = capture  # type: ignore[assignment]
    tokens = torch.randint(
        0, model_args.vocab_size, (model_args.batch, model_args.n_ctx), device="cuda"
    )
    for _ in range(args.steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(model(tokens), tokens)
        loss.backward()
        opt.step()
        opt.zero_grad()
    kernels.project_ = project
    saved, live = captured["saved"], captured["live"]
    protections, ks, layout = captured["protections"], captured["ks"], captured["layout"]
    masks = projection.reference_masks(saved, protections, ks)

    def replay(warm: torch.Tensor) -> None:
        for w, s in zip(live, saved, strict=True):
            w.data.copy_(s)
        layout.warm.copy_(warm)
        projection.project_(live, protections, ks)

    def run(label: str, warm: torch.Tensor) -> None:
        replay(warm)
        exact = all(
            torch.equal(w != 0, m & (s != 0)) for w, m, s in zip(live, masks, saved, strict=True)
        )
        replay(warm)  # compiled by now
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.reps):
                replay(warm)
            torch.cuda.synchronize()
        per: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            if event.key.startswith("_") and event.key.endswith("_kernel"):
                per[event.key.removesuffix("_kernel")] += event.device_time_total / args.reps / 1e3
        parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        print(f"| {label} | {sum(per.values()):.3f} | {exact} | {parts} |")

    def variant(label: str, knobs: dict[str, object], warm: torch.Tensor) -> None:
        """`run` with these module settings of `projection`, the shipped ones restored after."""
        shipped = {name: getattr(projection, name) for name in knobs}
        for name, value in knobs.items():
            setattr(projection, name, value)
        run(label, warm)
        for name, value in shipped.items():
            setattr(projection, name, value)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: the projection before "
          f"training step {args.steps} at the paper shape, ms per projection")  # fmt: skip
    print("| variant | total ms | kept sets exact | by kernel (ms) |")
    print("|---|---|---|---|")
    warm = captured["warm"]
    assert isinstance(warm, torch.Tensor)
    cold = warm.clone()
    cold[:, 0] = -1  # no previous threshold: the full radix select
    for start, state in (("", warm), ("cold (no warm start), ", cold)):
        variant(f"{start}shipped launch shapes", {}, state)
        for programs in (256, 4096):
            variant(
                f"{start}persistent passes of {programs} programs",
                {"_PASS_PROGRAMS": programs},
                state,
            )
    variant("every chunk pass 8 warps", {"_CHUNK_WARPS": 8}, warm)
    for entries in (512, 256):
        variant(f"protected keys {4096 // entries} warps", {"_PROTECT_WARP_ENTRIES": entries}, warm)
    for tile in (16384, 8192, 2048, 1024):
        warps = max(1, tile // projection._PROTECT_WARP_ENTRIES)
        variant(f"protected keys {tile} entries ({warps} warps)", {"_PROTECT_TILE": tile}, warm)
    # Smaller tiles at 4 warps: more programs an SM can hold, each reduction over fewer keys.
    for tile in (2048, 1024):
        variant(
            f"protected keys {tile} entries (4 warps)",
            {"_PROTECT_TILE": tile, "_PROTECT_WARP_ENTRIES": tile // 4},
            warm,
        )


if __name__ == "__main__":
    main()
