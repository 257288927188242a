"""AbsTopK on the GPU: the Triton kernels vs torch.topk and vs the HBM floor, side by side.

    python benchmarks/abstopk_speed.py            # on a CUDA machine

For each activation shape (tokens x width, k = width / 4), value distribution and dtype it
times, with CUDA events (median of --iters after warm-up, variants interleaved):
  copy          y = x.clone(): one read + one write of the tensor, the floor any AbsTopK pays;
  topk          torch.topk on |x| + scatter of the kept values (the usual implementation);
  reference     sparse_tf's pure-torch AbsTopK (topk plus the lower-index tie rule);
  fwd guided    the Triton forward with the guided threshold search (the default from
                `abstopk.GUIDED_FROM_WIDTH` wide);
  fwd bits      the Triton forward searching one bit per pass (the default below);
  bwd reference the reference backward (kept set recovered from y, grad masked);
  bwd kernel    the Triton backward (kept set from the forward's bit mask);
and, for the 1024-wide shapes, the q/k/v case: one launch over a 3 x width row (`split`) vs
three launches. The table gives ms, the speed-up over `topk`, and the fraction of the copy
floor reached (1.5 copies for the backward, which reads the gradient and writes one tensor; its
bit mask is 1/16 of a bf16 tensor). Distributions: normal, and t3 (heavy tails, like
activations). Both searches are checked equal to the reference on every input first.
"""

from __future__ import annotations

import argparse

import torch

from sparse_tf.kernels import abstopk
from sparse_tf.kernels.timing import median_ms


def topk_scatter(x: torch.Tensor, k: int) -> torch.Tensor:
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


def sample(rows: int, width: int, dist: str, dtype: torch.dtype) -> torch.Tensor:
    if dist == "normal":
        x = torch.randn(rows, width, device="cuda")
    else:  # Student t with 3 degrees of freedom, each row with its own scale
        t = torch.distributions.StudentT(3.0).sample((rows, width)).cuda()
        x = t * torch.rand(rows, 1, device="cuda").add(0.1)
    return x.to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--shapes", nargs="+", default=["16384x1024", "16384x4096", "65536x1024", "65536x4096"]
    )
    parser.add_argument("--dists", nargs="+", default=["normal", "t3"])
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| tokens x width | values | dtype | variant | ms | vs topk | of copy floor |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        rows, width = map(int, shape.split("x"))
        k = width // 4
        for dist in args.dists:
            for dtype in (torch.bfloat16, torch.float32):
                x = sample(rows, width, dist, dtype)
                grad = torch.randn_like(x)
                expected = abstopk.reference_forward(x, k)
                for search in ("guided", "bits"):
                    (y,), _ = abstopk.forward(x, k, search=search)
                    assert torch.equal(y, expected), f"{search} != reference"
                (y,), bits = abstopk.forward(x, k)
                fns = {
                    "copy": lambda x=x: x.clone(),
                    "topk": lambda x=x, k=k: topk_scatter(x, k),
                    "reference": lambda x=x, k=k: abstopk.reference_forward(x, k),
                    "fwd guided": lambda x=x, k=k: abstopk.forward(x, k, search="guided"),
                    "fwd bits": lambda x=x, k=k: abstopk.forward(x, k, search="bits"),
                    "bwd reference": lambda y=y, g=grad, k=k: abstopk.reference_backward(y, g, k),
                    "bwd kernel": lambda b=bits, g=grad, s=x.shape: abstopk.backward(b, [g], s),
                }
                if width == 1024:
                    qkv = sample(rows, 3 * width, dist, dtype)
                    fns["q,k,v: 3 launches"] = lambda x=qkv, k=k: [
                        abstopk.forward(p, k) for p in x.chunk(3, dim=-1)
                    ]
                    fns["q,k,v: split"] = lambda x=qkv, k=k: abstopk.forward(x, k, parts=3)
                ms = median_ms(fns, args.iters)
                for name, t in ms.items():
                    floor = ms["copy"] * (1.5 if name.startswith("bwd") else 1.0)
                    if name.startswith("q,k,v"):
                        floor = 3 * ms["copy"]
                    print(
                        f"| {rows} x {width} | {dist} | {str(dtype).removeprefix('torch.')} | "
                        f"{name} | {t:.3f} | {ms['topk'] / t:.1f}x | {floor / t:.0%} |"
                    )


if __name__ == "__main__":
    main()
