"""Sparse matmul vs cuBLAS vs torch.sparse (cuSPARSE CSR) on the model's shapes, and the crossovers.

    python benchmarks/spmm_speed.py                          # paper-d1024 shapes, 4k and 16k tokens
    python benchmarks/spmm_speed.py --write sparse_tf/kernels/spmm_crossovers.json

For every token count, layer shape (qkv, attention-out, MLP-in, MLP-out of a d_model / d_mlp
model) and density, in bf16: the forward Y = X·Wᵀ and dX = dY·W by cuBLAS on the masked dense
weight; by our kernel (`sparse_tf.kernels.spmm`: "total" includes the transposing copy of the
activation it gathers from, "kernel" is the product alone); by cuSPARSE (`torch.sparse.mm` on
a CSR weight); the transposing copy alone; and the rebuild of both formats of the weight (once
per optimizer step), timed as the layer runs it: one CUDA graph replay. Masks are uniformly
random at the exact density (no per-neuron protection). All variants of a row alternate in one
loop (CUDA events, medians).

The crossover of a shape is the largest density at which "total" beat cuBLAS by --margin (5%),
there and at every lower density measured; `--write FILE` merges them into FILE under this
GPU's name (the shipped tables: `sparse_tf/kernels/spmm_crossovers.json`, one per device
model; `sparse-tf calibrate` measures the same numbers into the local cache instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sparse_tf.io import write_json
from sparse_tf.kernels import crossovers, graphs
from sparse_tf.kernels.csr import csr_of
from sparse_tf.kernels.spmm import spmm_t
from sparse_tf.kernels.timing import median_ms
from sparse_tf.kernels.transpose import feature_major


def measure(tokens: int, d_in: int, d_out: int, density: float, iters: int) -> dict[str, float]:
    w, kept = crossovers.random_sparse(d_out, d_in, density, torch.device("cuda"))
    wb = w.bfloat16()
    x = torch.randn(tokens, d_in, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(tokens, d_out, device="cuda", dtype=torch.bfloat16)
    xt, dyt = feature_major(x, torch.bfloat16), feature_major(dy, torch.bfloat16)
    fwd = csr_of(w, kept, torch.bfloat16)
    bwd = csr_of(w, kept, torch.bfloat16, transpose=True)
    w_csr, wt_csr = wb.to_sparse_csr(), wb.t().contiguous().to_sparse_csr()

    # Correctness first: a benchmark of a wrong kernel measures nothing.
    ref_y, ref_dx = F.linear(x.float(), w), dy.float() @ w
    for name, got, ref in (
        ("fwd", spmm_t(xt, fwd), ref_y),
        ("dx", spmm_t(dyt, bwd), ref_dx),
    ):
        err = ((got.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        if err > 1e-2:
            raise SystemExit(f"{name} {tokens}x{d_in}->{d_out} at {density}: rel. error {err:.2e}")

    # Both formats, as a layer rebuilds them after each optimizer step: one CUDA graph replay.
    build, _ = graphs.capture(
        lambda: (
            csr_of(w, kept, torch.bfloat16),
            csr_of(w, kept, torch.bfloat16, transpose=True),
        ),
        w.device,
    )
    fns = {
        "cublas_fwd": lambda: F.linear(x, wb),
        "sparse_fwd": lambda: spmm_t(feature_major(x, torch.bfloat16), fwd),
        "sparse_fwd_kernel": lambda: spmm_t(xt, fwd),
        "cusparse_fwd": lambda: torch.sparse.mm(w_csr, xt),
        "transpose_x": lambda: feature_major(x, torch.bfloat16),
        "cublas_dx": lambda: dy @ wb,
        "sparse_dx": lambda: spmm_t(feature_major(dy, torch.bfloat16), bwd),
        "sparse_dx_kernel": lambda: spmm_t(dyt, bwd),
        "cusparse_dx": lambda: torch.sparse.mm(wt_csr, dyt),
        "build": build.replay,
    }
    return median_ms(fns, iters)


def vs(t: dict[str, float], name: str, base: str) -> str:
    return f"{t[name]:.3f} ({t[base] / t[name]:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--d-mlp", type=int, default=4096)
    parser.add_argument(
        "--densities", type=float, nargs="+", default=[1 / 2**i for i in range(4, 11)]
    )
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument(
        "--margin",
        type=float,
        default=1.05,
        help="speedup a crossover needs: below it the gain is within run-to-run noise and "
        "not worth the extra launches",
    )
    parser.add_argument("--write", type=Path, help="store the crossovers (JSON) for dispatch")
    args = parser.parse_args()
    torch.manual_seed(0)
    d, m = args.d_model, args.d_mlp
    shapes = {"qkv": (d, 3 * d), "attn-out": (d, d), "mlp-in": (d, m), "mlp-out": (m, d)}
    device = torch.cuda.get_device_name()
    print(f"# {device}, torch {torch.__version__}, bf16; ms (speedup vs cuBLAS)")
    rows = []
    for tokens in args.tokens:
        print(
            "\n| tokens | layer | in->out | density | cuBLAS fwd | ours fwd total | kernel | "
            "cuSPARSE fwd | transpose X | cuBLAS dX | ours dX total | kernel | "
            "cuSPARSE dX | format build |"
        )
        print("|" + "---|" * 14)
        for layer, (d_in, d_out) in shapes.items():
            speed_f, speed_dx = [], []
            for density in args.densities:
                t = measure(tokens, d_in, d_out, density, args.iters)
                sf, sx = t["cublas_fwd"] / t["sparse_fwd"], t["cublas_dx"] / t["sparse_dx"]
                speed_f.append(sf)
                speed_dx.append(sx)
                print(
                    f"| {tokens} | {layer} | {d_in}->{d_out} | 1/{round(1 / density)} | "
                    f"{t['cublas_fwd']:.3f} | {t['sparse_fwd']:.3f} ({sf:.2f}x) | "
                    f"{vs(t, 'sparse_fwd_kernel', 'cublas_fwd')} | "
                    f"{vs(t, 'cusparse_fwd', 'cublas_fwd')} | {t['transpose_x']:.3f} | "
                    f"{t['cublas_dx']:.3f} | {t['sparse_dx']:.3f} ({sx:.2f}x) | "
                    f"{vs(t, 'sparse_dx_kernel', 'cublas_dx')} | "
                    f"{vs(t, 'cusparse_dx', 'cublas_dx')} | "
                    f"{t['build']:.3f} |",
                    flush=True,
                )
            rows.append(
                {
                    "tokens": tokens,
                    "layer": layer,
                    "in": d_in,
                    "out": d_out,
                    "forward": crossovers.crossover(args.densities, speed_f, args.margin),
                    "dx": crossovers.crossover(args.densities, speed_dx, args.margin),
                    "speedups": {  # density -> [forward, dX], transposes included
                        str(d): [round(f, 3), round(x, 3)]
                        for d, f, x in zip(args.densities, speed_f, speed_dx, strict=True)
                    },
                }
            )
    print("\n| tokens | layer | forward crossover | dX crossover |\n|---|---|---|---|")
    for r in rows:
        show = lambda v: "never" if v is None else f"1/{round(1 / v)}"  # noqa: E731
        print(f"| {r['tokens']} | {r['layer']} | {show(r['forward'])} | {show(r['dx'])} |")
    if args.write:
        write_crossovers(args.write, rows, device)


def write_crossovers(path: Path, rows: list[dict], device: str) -> None:
    """Merge the measured shapes into `device`'s table in the crossover file (a shape measured
    again replaces its old row; other shapes and devices stay), atomically."""
    data = json.loads(path.read_text()) if path.is_file() else {"devices": {}}
    shapes = [(r["tokens"], r["in"], r["out"]) for r in rows]
    command = "python benchmarks/spmm_speed.py " + " ".join(sys.argv[1:])
    run = crossovers.run_record(device, command, shapes)
    data["devices"][device] = crossovers.merge(data["devices"].get(device, {}), rows, run)
    write_json(path, data)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
