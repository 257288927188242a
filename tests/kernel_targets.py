"""Compile every Triton kernel of sparse_tf for Hopper (sm_90: the H100 and H200) on any
machine, GPU or not: ptxas (shipped with Triton) checks what the interpreter cannot — types
across loops and branches, layouts, register and shared-memory limits.

    python -m tests.kernel_targets      # run by tests/test_kernels.py, without TRITON_INTERPRET

Prints one line per kernel and exits 1 if any fails to compile, or if a module launches a
kernel that has no target here.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("tests.kernel_targets: unset TRITON_INTERPRET (interpreted kernels do not compile)")

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparse_tf.kernels import (
    abstopk,
    csr,
    gelu_abstopk,
    norm_abstopk,
    projection,
    spmm,
    transpose,
)

HOPPER = GPUTarget("cuda", 90, 32)
MODULES = (abstopk, csr, gelu_abstopk, norm_abstopk, projection, spmm, transpose)
CHUNK = projection.CHUNK
TABLE = "chunk_start_ptr:*i64 chunk_end_ptr:*i64 chunk_seg_ptr:*i32"
WORK = "seg_first_ptr:*i64 seg_chunks_ptr:*i32 n_segs:i32"
WINDOW = (
    "seg:i32 warm_ptr:*i32 above_ptr:*i32 cand_count_ptr:*i32 cand_base_ptr:*i64 cap_ptr:*i32 "
    "cand_keys_ptr:*i32 cand_idx_ptr:*i32"
)
ABSTOPK = "x_ptr:*{x} y0_ptr:*{y} y1_ptr:*{y} y2_ptr:*{y} bits_ptr:*{b} r_ptr:*fp32 " + (
    "n_rows:i32 n_cols:i32 k:i32 log_ratio:fp32 stride_x:i32 stride_y:i32 stride_r:i32"
)

ABSTOPK_BWD = "bits_ptr:*i32 g0_ptr:*{g} g1_ptr:*{g} g2_ptr:*{g} gx_ptr:*bf16 gb_ptr:*fp32 " + (
    "n_rows:i32 n_cols:i32 stride_g0:i32 stride_g1:i32 stride_g2:i32 stride_gx:i32"
)
GELU_BWD = "bits_ptr:*i32 gy_ptr:*bf16 h_ptr:*bf16 gh_ptr:*bf16 gb_ptr:*fp32 n_rows:i32 " + (
    "n_cols:i32 stride_gy:i32 stride_h:i32 stride_gh:i32"
)

NORM = "x_ptr:*{x} w_ptr:*fp32 y_ptr:*bf16 bits_ptr:*i32 rstd_ptr:*fp32 " + (
    "n_cols:i32 k:i32 eps:fp32 log_ratio:fp32 stride_x:i32 stride_y:i32"
)


def abstopk_fwd(name: str, x: str, y: str, bits: str, **values: object) -> tuple:
    """The AbsTopK forward kernel in one of its forms: x's, the outputs' and the bits' dtypes."""
    defaults = {"BLOCK": 1024, "LOW_BIT": 16 if x == "bf16" else 0, "PARTS": 1,
                "STORE_MASK": False, "SMALL": False, "GUIDED": True, "PEEL": abstopk.PEEL,
                "RESIDUAL": False, "GELU": False}  # fmt: skip
    args = ABSTOPK.format(x=x, y=y, b=bits)
    return (f"abstopk {name}", abstopk._abstopk_fwd_kernel, args, defaults | values)


# (name, kernel, "arg:type ...", constexpr values): every kernel in the forms it launches.
TARGETS = [
    abstopk_fwd("fwd bf16 q/k/v", "bf16", "bf16", "i32", PARTS=3, GUIDED=False),
    abstopk_fwd("fwd bf16 residual", "bf16", "fp32", "i32", RESIDUAL=True, GUIDED=False),
    abstopk_fwd("fwd bf16 gelu", "bf16", "bf16", "i32", BLOCK=4096, GELU=True),
    abstopk_fwd("fwd bf16 guided", "bf16", "bf16", "i32"),
    abstopk_fwd("fwd fp32 bits", "fp32", "fp32", "i32", GUIDED=False),
    abstopk_fwd("mask", "fp32", "u8", "u8", STORE_MASK=True, SMALL=True),
    ("abstopk bwd", abstopk._abstopk_bwd_kernel, ABSTOPK_BWD.format(g="bf16"),
     {"BLOCK": 4096, "PARTS": 3, "ROWS": 1, "BIAS": False}),
    ("abstopk bwd q/k/v with bias", abstopk._abstopk_bwd_kernel, ABSTOPK_BWD.format(g="bf16"),
     {"BLOCK": 1024, "PARTS": 3, "ROWS": abstopk.BIAS_ROWS, "BIAS": True}),
    ("abstopk bwd residual with bias", abstopk._abstopk_bwd_kernel,
     ABSTOPK_BWD.format(g="fp32"),
     {"BLOCK": 1024, "PARTS": 1, "ROWS": abstopk.BIAS_ROWS, "BIAS": True}),
    ("gelu abstopk bwd", gelu_abstopk._gelu_abstopk_bwd_kernel, GELU_BWD,
     {"BLOCK": 4096, "ROWS": 1, "BIAS": False}),
    ("gelu abstopk bwd with bias", gelu_abstopk._gelu_abstopk_bwd_kernel, GELU_BWD,
     {"BLOCK": 4096, "ROWS": abstopk.BIAS_ROWS, "BIAS": True}),
    ("norm abstopk fwd fp32 -> bf16", norm_abstopk._norm_abstopk_fwd_kernel, NORM.format(x="fp32"),
     {"BLOCK": 1024, "LOW_BIT": 0, "GUIDED": False, "PEEL": abstopk.PEEL}),
    ("norm abstopk fwd bf16 guided", norm_abstopk._norm_abstopk_fwd_kernel, NORM.format(x="bf16"),
     {"BLOCK": 4096, "LOW_BIT": 16, "GUIDED": True, "PEEL": abstopk.PEEL}),
    ("norm abstopk bwd", norm_abstopk._norm_abstopk_bwd_kernel,
     "bits_ptr:*i32 g_ptr:*bf16 x_ptr:*fp32 w_ptr:*fp32 rstd_ptr:*fp32 dx_ptr:*fp32 "
     "dw_ptr:*fp32 n_rows:i32 n_cols:i32 stride_g:i32 stride_x:i32 stride_dx:i32",
     {"BLOCK": 1024}),
    ("protected keys", projection._protected_keys_kernel,
     "w_ptr:*fp32 keys_ptr:*i32 n_neurons:i32 length:i32 stride_neuron:i32 stride_elem:i32 "
     f"j:i32 {WINDOW}", {"BN": 16, "BL": 1024, "WINDOW": True, "WIDE": False}),
    ("protected keys, 64-bit offsets", projection._protected_keys_kernel,
     "w_ptr:*fp32 keys_ptr:*i32 n_neurons:i32 length:i32 stride_neuron:i32 stride_elem:i32 "
     f"j:i32 {WINDOW}", {"BN": 4, "BL": 1024, "WINDOW": False, "WIDE": True}),
    ("keys", projection._keys_kernel,
     "w_ptr:*fp32 p_ptr:*u8 keys_ptr:*i32 n:i32 cols:i32 p_stride_r:i32 p_stride_c:i32 "
     f"{WINDOW}", {"HAS_P": True, "BLOCK": 2048, "WINDOW": True}),
    ("decide", projection._decide_kernel,
     "warm_ptr:*i32 above_ptr:*i32 cand_count_ptr:*i32 cap_ptr:*i32 k_ptr:*i32 mode_ptr:*i32 "
     "state_ptr:*i32", {}),
    ("digit histogram", projection._digit_histogram_kernel,
     f"keys_ptr:*i32 {TABLE} {WORK} state_ptr:*i32 hist_ptr:*i32 mode_ptr:*i32 "
     "count_ptr:*i32 cap_ptr:*i32", {"HI": 30, "LO": 23, "CHUNK": CHUNK, "FEW": False,
                                     "MODE": 0, "DYNAMIC": False, "SEGS": 64}),
    ("digit histogram, candidates", projection._digit_histogram_kernel,
     f"keys_ptr:*i32 {TABLE} {WORK} state_ptr:*i32 hist_ptr:*i32 mode_ptr:*i32 "
     "count_ptr:*i32 cap_ptr:*i32", {"HI": 14, "LO": 7, "CHUNK": CHUNK, "FEW": True, "MODE": 1,
                                     "DYNAMIC": True, "SEGS": 64}),
    ("pick digit", projection._pick_digit_kernel, "hist_ptr:*i32 state_ptr:*i32 k_ptr:*i32",
     {"LO": 23}),
    ("count ties", projection._count_ties_kernel,
     f"keys_ptr:*i32 {TABLE} {WORK} state_ptr:*i32 ties_ptr:*i32 mode_ptr:*i32",
     {"CHUNK": CHUNK, "SEGS": 64}),
    ("candidate ties", projection._candidate_ties_kernel,
     f"cand_keys_ptr:*i32 cand_idx_ptr:*i32 {TABLE} seg_first_ptr:*i64 n_segs:i32 "
     "state_ptr:*i32 ties_ptr:*i32 mode_ptr:*i32 count_ptr:*i32 cap_ptr:*i32 "
     "seg_first_key_chunk_ptr:*i64", {"CHUNK": CHUNK, "KEY_CHUNK": CHUNK, "SEGS": 64}),
    ("update warm", projection._update_warm_kernel, "warm_ptr:*i32 state_ptr:*i32", {}),
    ("keep", projection._keep_kernel,
     f"keys_ptr:*i32 keep_ptr:*u8 {TABLE} state_ptr:*i32 k_ptr:*i32 tie_prefix_ptr:*i32",
     {"CHUNK": CHUNK}),
    ("zero dropped", projection._zero_dropped_kernel,
     f"address_ptr:*i64 keys_ptr:*i32 {TABLE} seg_base_ptr:*i64 state_ptr:*i32 k_ptr:*i32 "
     "tie_prefix_ptr:*i32", {"CHUNK": CHUNK, "DTYPE": tl.float32}),
    ("zero dropped bf16", projection._zero_dropped_kernel,
     f"address_ptr:*i64 keys_ptr:*i32 {TABLE} seg_base_ptr:*i64 state_ptr:*i32 k_ptr:*i32 "
     "tie_prefix_ptr:*i32", {"CHUNK": CHUNK, "DTYPE": tl.bfloat16}),
    ("csr count", csr._csr_count_kernel,
     "m_ptr:*fp32 stride_r:i32 stride_c:i32 n_rows:i32 n_cols:i32 counts_ptr:*i32 n_chunks:i32",
     {"BR": 8, "BC": 512}),
    ("csr place", csr._csr_place_kernel,
     "m_ptr:*fp32 stride_r:i32 stride_c:i32 n_rows:i32 n_cols:i32 ends_ptr:*i32 n_chunks:i32 "
     "cols_ptr:*i32 vals_ptr:*bf16", {"BR": 64, "BC": 64}),
    ("transpose", transpose._transpose_kernel,
     "x_ptr:*bf16 out_ptr:*bf16 R:i32 C:i32 stride_x:i32", {"BR": 64, "BC": 64}),
    ("spmm", spmm._spmm_kernel.fn,
     "a_ptr:*bf16 T:i32 ptr_ptr:*i32 cols_ptr:*i32 vals_ptr:*bf16 bias_ptr:*bf16 out_ptr:*bf16 "
     "n_rows:i32 stride_out:i32 AVG_NNZ:i32",
     {"HAS_BIAS": True, "DOT_FP32": False, "BO": 32, "BJ": 32, "BT": 128}),
]  # fmt: skip


def launched_kernels() -> set[str]:
    """Names of the kernels the modules launch (jitted functions named *_kernel)."""
    names = set()
    for module in MODULES:
        for name, value in vars(module).items():
            fn = getattr(value, "fn", value)  # autotuned kernels wrap the jitted function
            if name.endswith("_kernel") and isinstance(fn, triton.runtime.JITFunction):
                names.add(name)
    return names


def main() -> int:
    missing = launched_kernels() - {kernel.__name__ for _, kernel, _, _ in TARGETS}
    if missing:
        print(f"FAILED  kernels without a compile target here: {sorted(missing)}")
        return 1
    failed = 0
    for name, kernel, args, values in TARGETS:
        signature = dict(arg.split(":") for arg in args.split())
        signature |= {constant: "constexpr" for constant in values}
        try:
            triton.compile(ASTSource(kernel, signature, values), target=HOPPER)
            print(f"ok      {name}")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"FAILED  {name}: {type(e).__name__}: {str(e).strip()[:500]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
