"""AbsTopK on the GPU: the Triton kernel vs torch.topk and vs the HBM floor, side by side.

    python benchmarks/abstopk_speed.py            # on a CUDA machine

For each activation shape (tokens x width, k = width / 4) and dtype it times, with CUDA events
(median of --iters after warm-up, variants interleaved):
  copy        y = x.clone(): one read + one write of the tensor, the floor any AbsTopK pays;
  topk        torch.topk on |x| + scatter of the kept values (the usual implementation);
  reference   sparse_tf's pure-torch AbsTopK (topk plus the lower-index tie rule);
  kernel      sparse_tf's Triton forward;
  bwd ref     the reference backward (kept set from y, grad masked);
  bwd kernel  the Triton backward.
The table gives ms, the speed-up over `topk`, and the fraction of the copy floor reached.
"""

from __future__ import annotations

import argparse

import torch
from timing import cuda_ms  # benchmarks/timing.py

from sparse_tf.kernels import reference
from sparse_tf.kernels.abstopk import abs_topk_bwd, abs_topk_fwd


def topk_scatter(x: torch.Tensor, k: int) -> torch.Tensor:
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    shapes = [(65536, 1024), (65536, 4096), (16384, 8192)]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| tokens x width | dtype | variant | ms | vs topk | of copy floor |")
    print("|---|---|---|---|---|---|")
    for rows, width in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            k = width // 4
            x = torch.randn(rows, width, device="cuda", dtype=dtype)
            grad = torch.randn_like(x)
            y = abs_topk_fwd(x, k)
            assert torch.equal(y, reference.abs_topk_forward(x, k)), "kernel != reference"
            fns = {
                "copy": lambda x=x: x.clone(),
                "topk": lambda x=x, k=k: topk_scatter(x, k),
                "reference": lambda x=x, k=k: reference.abs_topk_forward(x, k),
                "kernel": lambda x=x, k=k: abs_topk_fwd(x, k),
                "bwd ref": lambda y=y, g=grad, k=k: reference.abs_topk_backward(y, g, k),
                "bwd kernel": lambda y=y, g=grad, k=k: abs_topk_bwd(y, g, k),
            }
            ms = cuda_ms(fns, args.iters)
            for name, t in ms.items():
                floor = ms["copy"] if not name.startswith("bwd") else ms["copy"] * 1.5
                print(
                    f"| {rows} x {width} | {str(dtype).removeprefix('torch.')} | {name} | "
                    f"{t:.3f} | {ms['topk'] / t:.1f}x | {floor / t:.0%} |"
                )
            del x, grad, y


if __name__ == "__main__":
    main()
