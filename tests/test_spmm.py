"""The sparse matmul against dense products: formats, forward, dX, dW, dispatch, the layer.

Without a GPU the kernels run under the Triton interpreter (fp32, small shapes); the `gpu` tests
run the paper's shapes in bf16 under autocast against cuBLAS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_tf import GPT, GPTConfig, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss
from sparse_tf.kernels import (
    DENSE,
    SPARSE,
    KernelError,
    SpmmPlan,
    WeightFormats,
    crossovers,
    sparse_linear,
    spmm_plan,
)
from sparse_tf.kernels.csr import csr_of, reference_csr
from sparse_tf.kernels.spmm import reference_spmm_t, spmm_t
from sparse_tf.kernels.transpose import feature_major
from sparse_tf.linear import SparseLinear

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sparse_matrix(rows: int, cols: int, density: float, seed: int) -> torch.Tensor:
    """Random weights at about `density`, with an empty row and an empty column when possible."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)
    if rows > 1:
        w[rows // 2] = 0.0
    if cols > 1:
        w[:, cols // 3] = 0.0
    return w.to(DEVICE)


@pytest.mark.interpreter
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 90),
    cols=st.integers(1, 300),
    tokens=st.integers(1, 70),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    transpose=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_format_and_product_match_the_reference(
    rows: int,
    cols: int,
    tokens: int,
    density: float,
    transpose: bool,
    bias: bool,
    seed: int,
) -> None:
    w = sparse_matrix(rows, cols, density, seed)
    m = w.t() if transpose else w
    got = csr_of(w, max(1, int((w != 0).sum())), torch.float32, transpose=transpose)
    ptr, idx, vals = reference_csr(m)
    nnz = int(ptr[-1])
    assert torch.equal(got.ptr, ptr)
    assert torch.equal(got.cols[:nnz], idx)
    assert torch.equal(got.vals[:nnz], vals)
    a = torch.randn(m.shape[1], tokens, device=DEVICE)
    b = torch.randn(m.shape[0], device=DEVICE) if bias else None
    torch.testing.assert_close(spmm_t(a, got, b), reference_spmm_t(a, m, b), rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
def test_capacity_may_exceed_the_nonzeros() -> None:
    # The projection's kept count bounds the nonzeros; kept weights that are exactly 0 leave
    # unused slots at the end, which nothing reads.
    w = sparse_matrix(20, 30, 0.1, 0)
    a = torch.randn(30, 9, device=DEVICE)
    got = spmm_t(a, csr_of(w, int((w != 0).sum()) + 50, torch.float32))
    torch.testing.assert_close(got, reference_spmm_t(a, w), rtol=1e-5, atol=1e-5)


def test_spmm_rejects_a_token_major_activation() -> None:
    w = sparse_matrix(4, 6, 0.5, 0)
    with pytest.raises(ValueError, match=r"contiguous \[6, T\]"):
        spmm_t(torch.zeros(5, 6, device=DEVICE), csr_of(w, 24, torch.float32))


@pytest.mark.interpreter
@pytest.mark.parametrize("plan", [SPARSE, SpmmPlan(True, False), SpmmPlan(False, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_autograd_matches_f_linear(
    plan: SpmmPlan, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sparse_tf.kernels.spmm_plan", lambda x, w, kept: plan)
    w = sparse_matrix(48, 40, 0.1, 1).requires_grad_()
    b = torch.randn(48, device=DEVICE).requires_grad_() if bias else None
    x = torch.randn(3, 7, 40, device=DEVICE, requires_grad=True)
    y = sparse_linear(x, w, b, int((w != 0).sum()), WeightFormats())
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), gy)
    ref_y = F.linear(x, w, b)
    ref = torch.autograd.grad(ref_y, [x, w] + ([b] if bias else []), gy)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref, strict=True):  # dW is dense: every weight gets its gradient
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
def test_formats_follow_the_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    layer = SparseLinear(40, 24, bias=False).to(DEVICE)
    x = torch.randn(5, 40, device=DEVICE)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.2)
    layer.mark_sparse(int((layer.weight != 0).sum()))
    assert layer.marked_kept is not None
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # scaled in place: a new version, so the formats are rebuilt
        layer.weight.mul_(3.0)
    layer.mark_sparse(layer.kept)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # densified behind the layer's back: it must not trust `kept`
        layer.weight.add_(1.0)
    assert layer.marked_kept is None
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
def test_graphed_products_record_plans_and_say_when_a_capture_no_longer_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`GraphedProducts` (what a CUDA graph of a micro-batch relies on; the captures themselves
    are GPU tests): a recorded product follows the plan of the eager call and reads formats
    already built; `refresh` holds while nothing moved, and fails when a layer's plan changes
    (its weight modified without being marked again) or its formats had to be rebuilt into
    other tensors (on a CPU, where builds are not graphed, after every change)."""
    from sparse_tf.errors import SparseTFError
    from sparse_tf.linear import GraphedProducts

    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    torch.manual_seed(0)
    layer = SparseLinear(40, 24).to(DEVICE)
    plain = SparseLinear(40, 24).to(DEVICE)  # never marked: dense products
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.2)
    layer.mark_sparse(int((layer.weight != 0).sum()))
    x = torch.randn(6, 40, device=DEVICE, requires_grad=True)
    layer(x).sum().backward()  # the eager "warm-up": both formats built for this weight

    products = GraphedProducts()
    assert products.refresh()  # nothing recorded yet
    with products.recording():
        y = products.product(layer, x, layer.bias)
        z = products.product(plain, x.detach(), plain.bias)
        with pytest.raises(SparseTFError, match="cannot be nested"), products.recording():
            pass
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, F.linear(x, plain.weight, plain.bias))
    assert [(p.plan, p.reads) for p in products._products] == [
        (SPARSE, SPARSE),
        (DENSE, DENSE),
    ]
    assert products.refresh()  # formats still those of the recorded weight
    with torch.no_grad():
        layer.weight.mul_(2.0)  # changed, not marked: the layer would go dense
    assert not products.refresh()
    layer.mark_sparse(layer.kept)  # marked again: sparse; formats rebuilt in place on a GPU
    assert products.refresh() == (DEVICE.type == "cuda")  # (graphed builds), elsewhere anew
    with products.recording():  # re-recorded: holds again
        products.product(layer, x, layer.bias)
    assert products.refresh()


def test_a_compiled_model_is_not_recompiled_when_the_kept_counts_change() -> None:
    """Under torch.compile the layers stay on cuBLAS and must not read `kept`: the L0 anneal
    changes it after every optimizer step, and a guard on it recompiled the model every step
    (then, past the recompile limit, ran it uncompiled)."""
    torch._dynamo.reset()
    model = GPT(GPTConfig(vocab_size=64, n_ctx=16, n_layer=1, d_model=32, d_head=8)).to(DEVICE)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    compiled = torch.compile(model, backend="eager")  # the guards are Dynamo's, any backend
    tok = torch.randint(0, 64, (2, 16), device=DEVICE)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for kept in (None, 100, 90, 80):
            for layer in layers:
                layer.mark_sparse(kept)
            compiled(tok)


@pytest.mark.interpreter
def test_training_steps_match_the_dense_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three steps of a sparse model with every product on the sparse kernel track the same
    model on dense products (the optimizer marks the layers after each projection)."""
    cfg = GPTConfig(vocab_size=64, n_ctx=16, n_layer=1, d_model=32, d_head=8)
    sparsity = SparsityConfig(l0=1 / 8, anneal_start=0.0, anneal_end=0.0)
    tok = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    losses = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        torch.manual_seed(0)
        model = GPT(cfg).to(DEVICE)
        opt = SparseOptimizer(model, OptimConfig(), sparsity, 3)
        losses[backend] = []
        for _ in range(3):
            loss = lm_loss(model(tok), tok)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[backend].append(loss.item())
        marked = [m.marked_kept for m in model.modules() if isinstance(m, SparseLinear)]
        assert all(k is not None for k in marked)
    assert losses["triton"] == pytest.approx(losses["reference"], rel=1e-4)


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.zeros(4096, 64), torch.zeros(128, 64)
    monkeypatch.delenv("SPARSE_TF_KERNELS", raising=False)
    assert spmm_plan(x, w, 10) == DENSE  # CPU tensors: dense products by default
    assert spmm_plan(x, w, None) == DENSE
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    assert spmm_plan(x.to(DEVICE), w, 10) == DENSE
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    assert spmm_plan(x.to(DEVICE), w, None) == DENSE  # not known to be sparse
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        with pytest.raises(KernelError, match="sparse matmul cannot run on cpu"):
            spmm_plan(x, w, 10)


@pytest.fixture
def fresh_plans() -> object:
    """`crossovers.plan` memoises; tests that change the tables must not see or leave old
    plans."""
    crossovers.plan.cache_clear()
    yield
    crossovers.plan.cache_clear()


def write_table(device: str, rows: list[crossovers.Crossover]) -> None:
    """A table for `device` in this machine's cache, as `sparse-tf calibrate` leaves one."""
    entry = {
        "device": device,
        "measured": [
            crossovers.run_record(device, "test", [(r.tokens, r.d_in, r.d_out) for r in rows])
        ],
        "shapes": [
            {"tokens": r.tokens, "in": r.d_in, "out": r.d_out, "forward": r.forward, "dx": r.dx}
            for r in rows
        ],
    }
    path = crossovers.cache_file(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry))


@pytest.mark.usefixtures("fresh_plans")
def test_crossover_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path))
    write_table(
        "cpu",
        [
            crossovers.Crossover(4096, 1024, 4096, forward=1 / 128, dx=1 / 64),
            crossovers.Crossover(16384, 1024, 4096, forward=1 / 256, dx=None),
            crossovers.Crossover(16384, 4096, 1024, forward=None, dx=1 / 512),
        ],
    )
    cpu = torch.device("cpu")
    assert crossovers.plan(cpu, 16384, 1024, 4096, 1 / 256) == SpmmPlan(True, False)
    assert crossovers.plan(cpu, 16384, 1024, 4096, 1 / 128) == DENSE
    assert crossovers.plan(cpu, 4096, 1024, 4096, 1 / 100) == SpmmPlan(False, True)
    assert crossovers.plan(cpu, 4096, 1024, 4096, 1 / 1000) == SPARSE
    assert crossovers.plan(cpu, 9000, 1024, 4096, 1 / 1000) == SpmmPlan(True, False)  # nearest
    assert crossovers.plan(cpu, 60000, 4096, 1024, 1 / 1024) == SpmmPlan(False, True)
    assert crossovers.plan(cpu, 1024, 1024, 4096, 1 / 1024) == DENSE  # fewer tokens than measured


@pytest.mark.usefixtures("fresh_plans")
def test_tables_are_per_device_and_local_rows_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path))
    shipped = crossovers.shipped()
    assert {"NVIDIA H100 80GB HBM3", "NVIDIA H200"} <= shipped.keys()
    assert shipped["NVIDIA H100 80GB HBM3"].rows != shipped["NVIDIA H200"].rows  # measured apart
    device = "NVIDIA H200"
    assert crossovers.table(device) == shipped[device]  # nothing measured on this machine
    row = shipped[device].rows[0]
    write_table(device, [crossovers.Crossover(row.tokens, row.d_in, row.d_out, None, 1.0)])
    local = crossovers.table(device)
    assert len(local.rows) == len(shipped[device].rows)  # replaced, not added
    same = [
        r for r in local.rows if (r.tokens, r.d_in, r.d_out) == (row.tokens, row.d_in, row.d_out)
    ]
    assert same == [crossovers.Crossover(row.tokens, row.d_in, row.d_out, None, 1.0)]
    assert crossovers.table("Some Future GPU").rows == ()  # measured on first use instead
    crossovers.cache_file(device).write_text("{not json")
    with pytest.raises(ValueError, match=r"spmm_crossovers/NVIDIA_H200\.json: not valid JSON"):
        crossovers.table(device)


@pytest.mark.interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's table (GPU: test below)")
@pytest.mark.usefixtures("fresh_plans")
def test_unmeasured_shape_is_measured_once_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device without a row for a shape measures it when a layer first asks (real timings:
    on a CPU the interpreted kernel loses everywhere), caches it, and never measures again."""
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path))
    monkeypatch.setattr(crossovers, "TOKENS", (64, 128))  # the interpreter: small sizes
    monkeypatch.setattr(crossovers, "DENSITIES", (1 / 4,))
    cpu = torch.device("cpu")
    assert crossovers.plan(cpu, 128, 32, 48, 1 / 16) == DENSE
    assert (
        "measuring when the sparse matmul beats cuBLAS for 32 -> 48 on cpu"
        in capsys.readouterr().err
    )
    saved = json.loads(crossovers.cache_file("cpu").read_text())
    assert [(r["tokens"], r["in"], r["out"]) for r in saved["shapes"]] == [
        (64, 32, 48),
        (128, 32, 48),
    ]
    assert all(r["forward"] is None and r["dx"] is None for r in saved["shapes"])
    assert set(saved["shapes"][0]["speedups"]) == {str(1 / 4)}
    crossovers.plan.cache_clear()
    assert crossovers.plan(cpu, 64, 32, 48, 1 / 4) == DENSE
    assert capsys.readouterr().err == ""  # cached: not measured again
    assert len(json.loads(crossovers.cache_file("cpu").read_text())["measured"]) == 1


def _first_use_in_a_process(measured: object, start: object) -> None:
    """A spawned process whose layer first asks for the 32 -> 48 shape at the moment its
    sibling does (`start`, a Barrier), counting its measurements in `measured` (a Value).
    Spawned, not forked: a forked child's first CPU matmul waits forever on the OpenMP pool
    of its parent's threads."""
    crossovers.TOKENS, crossovers.DENSITIES = (64,), (1 / 4,)  # the interpreter: small sizes
    measure = crossovers.measure_shape

    def counted(*args: object, **kwargs: object) -> list[dict[str, object]]:
        with measured.get_lock():  # type: ignore[attr-defined]
            measured.value += 1  # type: ignore[attr-defined]
        return measure(*args, **kwargs)  # type: ignore[arg-type]

    crossovers.measure_shape = counted  # type: ignore[assignment]
    start.wait()  # type: ignore[attr-defined]
    assert crossovers.plan(torch.device("cpu"), 64, 32, 48, 1 / 16) == DENSE


@pytest.mark.interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's table")
def test_processes_sharing_a_device_measure_a_shape_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes whose layers first ask for the same unmeasured shape at the same moment
    (the jobs of a benchmark sharing one GPU, torchrun's ranks): one measures, the other waits
    and reads its rows from the cache."""
    import multiprocessing

    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path))  # the children inherit the environment
    ctx = multiprocessing.get_context("spawn")
    measured, start = ctx.Value("i", 0), ctx.Barrier(2)
    children = [
        ctx.Process(target=_first_use_in_a_process, args=(measured, start)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=600)
    assert [child.exitcode for child in children] == [0, 0]
    assert measured.value == 1
    saved = json.loads(crossovers.cache_file("cpu").read_text())
    assert [(r["tokens"], r["in"], r["out"]) for r in saved["shapes"]] == [(64, 32, 48)]
    assert len(saved["measured"]) == 1


@pytest.mark.interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's timings (GPU: test below)")
def test_a_slower_sparse_product_goes_back_to_cublas(capsys: pytest.CaptureFixture[str]) -> None:
    """The first use of a plan times both ways on the layer's own tensors (here the interpreted
    kernel against the CPU's own product: slower) and keeps the faster, once per process."""
    w = sparse_matrix(48, 40, 0.1, 1)
    x = torch.randn(3, 20, 40, device=DEVICE)
    kept = int((w != 0).sum())
    crossovers._VERDICTS.clear()
    assert crossovers.verified(SPARSE, x, w, kept, torch.float32) == DENSE
    err = capsys.readouterr().err
    assert "the sparse forward of 40 -> 48" in err
    assert "the sparse dX of 40 -> 48" in err
    assert "using cuBLAS (re-measure with: sparse-tf calibrate)" in err
    assert crossovers.verified(SPARSE, x, w, kept, torch.float32) == DENSE
    assert capsys.readouterr().err == ""  # decided once
    crossovers._VERDICTS.clear()


@pytest.mark.gpu
@pytest.mark.usefixtures("fresh_plans")
def test_first_use_and_verification_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown shape is measured into the cache; the live check keeps a sparse product that
    wins (1/1024 of a wide layer) and turns back one that loses (1/16)."""
    monkeypatch.setenv("SPARSE_TF_CACHE", str(tmp_path))
    monkeypatch.setattr(crossovers, "TOKENS", (16384,))
    cuda = torch.device("cuda")
    crossovers.plan(cuda, 16384, 2048, 8192 + 16, 1 / 1024)  # a width no table holds
    assert "measuring when the sparse matmul beats cuBLAS" in capsys.readouterr().err
    saved = json.loads(crossovers.cache_file(crossovers.device_name(cuda)).read_text())
    assert [(r["tokens"], r["in"], r["out"]) for r in saved["shapes"]] == [(16384, 2048, 8208)]
    crossovers._VERDICTS.clear()
    x = torch.randn(16384, 2048, device="cuda", dtype=torch.bfloat16)
    for density, expected in ((1 / 1024, SPARSE), (1 / 16, DENSE)):
        w, kept = crossovers.random_sparse(8192, 2048, density, cuda)
        assert crossovers.verified(SPARSE, x, w, kept, torch.bfloat16) == expected, density
    crossovers._VERDICTS.clear()


def test_calibration_shapes_and_table() -> None:
    """What `sparse-tf calibrate` measures for a model and prints afterwards."""
    assert crossovers.layer_shapes(1024, 4096, 16) == [
        (1024, 3072),
        (1024, 1024),
        (1024, 4096),
        (4096, 1024),
    ]
    assert crossovers.layer_shapes(40, 96, 16)[:2] == [(40, 96), (32, 40)]  # 2 heads fit
    rows = [{"tokens": 4096, "in": 1024, "out": 4096, "forward": 1 / 128, "dx": None}]
    assert crossovers.calibration_table("NVIDIA H100", rows).splitlines() == [
        "crossovers on NVIDIA H100 (sparse where the density is at most):",
        "| tokens | in -> out | forward | dX |",
        "|---|---|---|---|",
        "| 4096 | 1024 -> 4096 | 1/128 | never |",
    ]


def test_shipped_crossovers_were_measured() -> None:
    for device, table in crossovers.shipped().items():
        assert table.rows
        for run in table.measured:
            assert run["device"] == device
            assert run["command"].startswith(
                ("python benchmarks/spmm_speed.py", "sparse-tf calibrate", "first use: ")
            )
        measured = {tuple(shape) for run in table.measured for shape in run["shapes"]}
        assert {(r.tokens, r.d_in, r.d_out) for r in table.rows} <= measured
        for r in table.rows:
            for d in (r.forward, r.dx):
                assert d is None or 0 < d <= 1


@pytest.mark.gpu
@pytest.mark.parametrize(("d_in", "d_out"), [(1024, 4096), (4096, 1024), (1024, 3072)])
@pytest.mark.parametrize("density", [1 / 64, 1 / 256, 1 / 1024])
@pytest.mark.parametrize("plan", [SPARSE, SpmmPlan(True, False), SpmmPlan(False, True)])
def test_sparse_linear_bf16_at_paper_shapes(
    d_in: int, d_out: int, density: float, plan: SpmmPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sparse_tf.kernels.spmm_plan", lambda x, w, kept: plan)
    torch.manual_seed(0)
    w = torch.randn(d_out, d_in, device="cuda") * (torch.rand(d_out, d_in, device="cuda") < density)
    w.requires_grad_()
    b = torch.randn(d_out, device="cuda", requires_grad=True)
    x = torch.randn(16, 1024, d_in, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = sparse_linear(x, w, b, int((w != 0).sum()), WeightFormats())
        ref_y = F.linear(x, w, b)
    assert y.dtype == ref_y.dtype == torch.bfloat16
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, w, b], gy)
    ref = torch.autograd.grad(ref_y, [x, w, b], gy)
    for g, r in zip((y, *got), (ref_y, *ref), strict=True):
        assert g.dtype == r.dtype
        err = ((g.float() - r.float()).norm() / r.float().norm()).item()
        assert err < 1e-2, err


@pytest.mark.gpu
def test_format_kernel_at_paper_shapes() -> None:
    torch.manual_seed(0)
    w = torch.randn(4096, 1024, device="cuda") * (torch.rand(4096, 1024, device="cuda") < 1 / 64)
    for transpose in (False, True):
        m = w.t() if transpose else w
        got = csr_of(w, int((w != 0).sum()), torch.bfloat16, transpose=transpose)
        ptr, idx, vals = reference_csr(m)
        assert torch.equal(got.ptr, ptr)
        assert torch.equal(got.cols, idx)
        assert torch.equal(got.vals, vals.bfloat16())
    x = torch.randn(300, 1024, device="cuda")
    assert torch.equal(feature_major(x, torch.bfloat16), x.t().bfloat16())


def test_crossover_file_is_json() -> None:
    from importlib import resources

    json.loads(resources.files("sparse_tf.kernels").joinpath(crossovers.FILE).read_text())


@pytest.mark.gpu
def test_graphed_format_builds_follow_the_weight_through_an_anneal() -> None:
    """The CUDA-graph builds refill their buffers after every change of the weight, including
    a lower kept count (same capture) and a higher one (recaptured)."""
    torch.manual_seed(0)
    w = torch.randn(512, 256, device="cuda")
    formats = WeightFormats()
    for density in (1 / 8, 1 / 16, 1 / 64, 1 / 4):
        with torch.no_grad():
            w.copy_(torch.randn_like(w) * (torch.rand_like(w) < density))
        kept = int((w != 0).sum())
        for transpose in (False, True):
            got = formats.get(w, kept, torch.bfloat16, transpose)
            ptr, idx, vals = reference_csr(w.t() if transpose else w)
            assert torch.equal(got.ptr, ptr)
            assert torch.equal(got.cols[:kept], idx)
            assert torch.equal(got.vals[:kept], vals.bfloat16())


@pytest.mark.gpu
def test_format_builds_replayed_out_of_capture_order_leave_each_other_alone() -> None:
    """A validation pass rebuilds the layers' forward formats only and the next training step
    their dX formats, so the builds' CUDA graphs replay in another order than they were
    captured. No build may write into another layer's finished format (in one memory pool
    shared by all captures, a capture may be given memory that an earlier capture's replays
    still write: its temporaries)."""
    torch.manual_seed(0)
    weights = [torch.zeros(256, 128, device="cuda") for _ in range(6)]
    formats = [WeightFormats() for _ in weights]
    capacity = 256 * 128 // 8

    def optimizer_step() -> None:
        with torch.no_grad():
            for w in weights:
                w.copy_(torch.randn_like(w) * (torch.rand_like(w) < 1 / 16))

    def build(transposes: tuple[bool, ...]) -> None:
        for w, f in zip(weights, formats, strict=True):
            for transpose in transposes:
                f.get(w, capacity, torch.bfloat16, transpose)

    optimizer_step()
    build((False, True))  # the first training step: captured layer by layer, forward then dX
    for _ in range(3):
        optimizer_step()
        build((False,))  # validation
        build((True,))  # the next training step (forward formats already fresh)
        for w, f in zip(weights, formats, strict=True):
            for transpose in (False, True):
                got = f.get(w, capacity, torch.bfloat16, transpose)  # fresh: no rebuild
                ptr, idx, vals = reference_csr(w.t() if transpose else w)
                n = idx.numel()
                assert torch.equal(got.ptr, ptr)
                assert torch.equal(got.cols[:n], idx)
                assert torch.equal(got.vals[:n], vals.bfloat16())


@pytest.mark.gpu
def test_bf16_training_on_the_sparse_kernels_tracks_cublas(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = GPTConfig(vocab_size=512, n_ctx=128, n_layer=2, d_model=256)
    sparsity = SparsityConfig(l0=1 / 64, anneal_start=0.0, anneal_end=0.0)
    tok = torch.randint(0, 512, (16, 128), device="cuda")
    losses = {}
    for backend in ("triton", "auto"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)  # auto: cuBLAS at this size
        torch.manual_seed(0)
        model = GPT(cfg).cuda()
        opt = SparseOptimizer(model, OptimConfig(), sparsity, 5)
        losses[backend] = []
        for _ in range(5):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = lm_loss(model(tok), tok)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[backend].append(loss.item())
    assert losses["triton"] == pytest.approx(losses["auto"], rel=2e-2)
