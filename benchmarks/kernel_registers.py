"""Registers per thread of the AbsTopK kernels and the projection's protected-keys kernel at
the paper shape, and what they leave of an SM: compiled for Hopper (sm_90a) on any machine, no
GPU needed.

    python benchmarks/kernel_registers.py

Each kernel is compiled as the JIT compiles it at `paper-d1024` (d_model 1024, MLP 4096,
bf16 autocast): the constexprs and warps its launcher picks (the protected-keys kernel also at
more warps), pointers and integer arguments specialised as 16-divisible (as the JIT does for
these shapes; not the matrix index and the protection's j), then assembled by the ptxas
that ships with Triton (`-v`). The table gives registers per thread, spills, and the warps one
SM can hold at that register count (65,536 registers, allocated per warp in units of 256; at
most 32 thread blocks and 64 warps per SM): a kernel that waits on memory with few warps
resident has little to hide the wait behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparse_tf.kernels import abstopk, gelu_abstopk, norm_abstopk, projection

HOPPER = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
FLOATS = {"log_ratio", "eps"}
SMALL_INTS = {"seg", "j"}
"""Integer arguments that are not multiples of 16 at the paper shape."""


def signature(kernel: triton.JITFunction, constexprs: dict, pointers: dict[str, str]) -> dict:
    """Types of every argument: pointers as given (default bf16), floats, the rest i32."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, "bf16")
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig


def registers(kernel: triton.JITFunction, constexprs: dict, pointers: dict[str, str],
              warps: int) -> tuple[int, int]:  # fmt: skip
    """(registers per thread, spilled bytes) of one compiled form."""
    sig = signature(kernel, constexprs, pointers)
    divisible = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if (sig[name] == "i32" and name not in SMALL_INTS) or sig[name].startswith("*")
    }
    compiled = triton.compile(
        ASTSource(kernel, sig, constexprs, divisible), target=HOPPER, options={"num_warps": warps}
    )
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        cmd = [PTXAS, "-arch=sm_90a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")]
        report = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", report).group(1))  # type: ignore[union-attr]
    spills = re.search(r"(\d+) bytes spill stores", report)
    return regs, int(spills.group(1)) if spills else 0


def resident_warps(regs: int, warps: int) -> int:
    """Warps one SM holds: registers (per warp, rounded up to 256) and block limits."""
    per_warp = -(-regs * 32 // 256) * 256
    blocks = min(65536 // (per_warp * warps), 32, 64 // warps)
    return blocks * warps


def forward(name: str, width: int, pointers: dict[str, str], **values: object) -> tuple:
    block, warps = abstopk.launch_config(width, 32)
    constexprs = {"BLOCK": block, "LOW_BIT": 16, "PARTS": 1, "STORE_MASK": False,
                  "SMALL": False, "GUIDED": abstopk.default_search(width) == "guided",
                  "PEEL": abstopk.PEEL, "RESIDUAL": False, "GELU": False} | values  # fmt: skip
    return name, abstopk._abstopk_fwd_kernel, constexprs, {"bits_ptr": "i32"} | pointers, warps


def main() -> None:
    d, mlp = 1024, 4096
    bias_block, bias_warps = abstopk.backward_config(d, True)
    gelu_block, gelu_warps = abstopk.backward_config(mlp, True)
    norm_block, norm_warps = abstopk.launch_config(d, 32)
    norm = norm_abstopk._norm_abstopk_fwd_kernel
    cases = [
        forward("q/k/v forward", d, {}, PARTS=3),
        forward("q/k/v forward, bit search", d, {}, PARTS=3, GUIDED=False),
        forward(
            "residual write forward",
            d,
            {"y0_ptr": "fp32", "y1_ptr": "fp32", "y2_ptr": "fp32", "r_ptr": "fp32"},
            RESIDUAL=True,
        ),
        forward("GELU forward", mlp, {}, GELU=True),
        (
            "norm forward (fp32 rows)",
            norm,
            {
                "BLOCK": norm_block,
                "LOW_BIT": 0,
                "GUIDED": abstopk.default_search(d) == "guided",
                "PEEL": abstopk.PEEL,
            },
            {"x_ptr": "fp32", "w_ptr": "fp32", "bits_ptr": "i32", "rstd_ptr": "fp32"},
            norm_warps,
        ),
        (
            "q/k/v backward, bias",
            abstopk._abstopk_bwd_kernel,
            {"BLOCK": bias_block, "PARTS": 3, "ROWS": abstopk.BIAS_ROWS, "BIAS": True},
            {"bits_ptr": "i32", "gb_ptr": "fp32"},
            bias_warps,
        ),
        (
            "GELU backward, bias",
            gelu_abstopk._gelu_abstopk_bwd_kernel,
            {"BLOCK": gelu_block, "ROWS": abstopk.BIAS_ROWS, "BIAS": True},
            {"bits_ptr": "i32", "gb_ptr": "fp32"},
            gelu_warps,
        ),
    ]
    keys = {"w_ptr": "fp32", "cand_base_ptr": "i64"} | {
        name: "i32"
        for name in projection._protected_keys_kernel.arg_names
        if name.endswith("_ptr") and name not in ("w_ptr", "cand_base_ptr")
    }
    tile = projection._PROTECT_TILE
    for warps in sorted({tile // projection._PROTECT_WARP_ENTRIES, 8, 16}):
        cases.append(
            (
                f"protected keys with the window ({tile} entries)",
                projection._protected_keys_kernel,
                {"BN": tile // d, "BL": d, "WINDOW": True, "WIDE": False},
                keys,
                warps,
            )
        )
    print("| kernel | warps per program | registers per thread | spilled bytes | warps per SM |")
    print("|---|---|---|---|---|")
    for name, kernel, constexprs, pointers, warps in cases:
        regs, spills = registers(kernel, constexprs, pointers, warps)
        print(f"| {name} | {warps} | {regs} | {spills} | {resident_warps(regs, warps)} |")


if __name__ == "__main__":
    main()
