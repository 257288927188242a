"""Kernels against their pure-torch references: identical outputs, kept sets and gradients.

Without a GPU the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on small shapes; on a GPU the same tests run on CUDA, and the `gpu` tests
add realistic shapes in bf16.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_tf import kernels
from sparse_tf.kernels import KernelError, abs_topk_backend, reference
from sparse_tf.kernels.abstopk import MAX_WIDTH, abs_topk_fwd
from tests.helpers import tiny_model, tokens

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def hard_rows(rows: int, width: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows with what breaks top-k selections: runs of zeros, exact ties (small integers, both
    signs), an all-zero row, and ordinary values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    kind = torch.randint(0, 4, (rows,), generator=g)
    ties = torch.randint(-3, 4, (rows, width), generator=g).float()
    x = torch.where((kind == 1)[:, None], ties, x)
    x = torch.where((kind == 2)[:, None] & (torch.rand(rows, width, generator=g) < 0.7), 0.0, x)
    x = torch.where((kind == 3)[:, None], 0.0, x)  # empty row
    return x.to(dtype)


def check_abs_topk(x: torch.Tensor, k: int) -> None:
    x = x.to(DEVICE)
    y = abs_topk_fwd(x, k)
    expected = reference.abs_topk_forward(x, k)
    assert torch.equal(y, expected)
    grad = torch.randn(x.shape, device=DEVICE).to(x.dtype)
    from sparse_tf.kernels.abstopk import abs_topk_bwd

    assert torch.equal(abs_topk_bwd(y, grad, k), reference.abs_topk_backward(expected, grad, k))
    # The backward's kept set, recovered from y, is the forward's; the mask kernel agrees.
    kept = reference.topk_mask(x.abs(), k)
    assert torch.equal(reference.abs_topk_kept(expected, k), kept)
    from sparse_tf.kernels.abstopk import abs_topk_mask

    assert torch.equal(abs_topk_mask(x, k), kept)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(0, 5),
    width=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_abs_topk_kernel_matches_reference(
    dtype: torch.dtype, rows: int, width: int, k_frac: float, seed: int
) -> None:
    k = max(1, min(width, round(k_frac * width)))
    check_abs_topk(hard_rows(rows, width, dtype, seed), k)


@pytest.mark.interpreter
@pytest.mark.parametrize("k", [1, 2, 4, 8, 9])  # both sides of SMALL_K
def test_abs_topk_kernel_small_k(k: int) -> None:
    for dtype in DTYPES:
        check_abs_topk(hard_rows(8, 40, dtype, k), k)


@pytest.mark.interpreter
def test_abs_topk_kernel_on_batched_non_contiguous_input() -> None:
    x = hard_rows(24, 96, torch.float32, 1).view(2, 3, 4, 96).transpose(1, 2)  # [2, 4, 3, 96]
    check_abs_topk(x, 24)
    assert abs_topk_fwd(x.to(DEVICE), 24).shape == x.shape


@pytest.mark.interpreter
def test_abs_topk_autograd_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    x = hard_rows(6, 64, torch.float32, 2).to(DEVICE).requires_grad_()
    assert abs_topk_backend(x) == "triton"
    w = torch.randn(64, device=DEVICE)
    (kernels.abs_topk(x, 16) * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    (kernels.abs_topk(x_ref, 16) * w).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.interpreter
def test_model_forward_is_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model().to(DEVICE)
    x = tokens(model.cfg, batch=1, seq=6).to(DEVICE)
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    expected = model(x)
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    assert torch.equal(model(x), expected)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 8)
    monkeypatch.delenv("SPARSE_TF_KERNELS", raising=False)
    assert abs_topk_backend(x) == "reference"  # CPU tensors use the reference by default
    monkeypatch.setenv("SPARSE_TF_KERNELS", "reference")
    assert abs_topk_backend(x.to(DEVICE)) == "reference"
    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")
    with pytest.raises(KernelError, match=r"cannot run on a torch\.int64 tensor"):
        abs_topk_backend(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(KernelError, match=f"width <= {MAX_WIDTH}"):
        abs_topk_backend(torch.zeros(1, MAX_WIDTH + 1))
    monkeypatch.setenv("SPARSE_TF_KERNELS", "fast")
    with pytest.raises(KernelError, match="expected auto, triton or reference"):
        abs_topk_backend(x)


def test_kept_set_recovered_from_the_output() -> None:
    x = torch.tensor([[0.0, 3.0, 0.0, -1.0, 0.0], [2.0, -2.0, 2.0, 0.0, 1.0]])
    y = reference.abs_topk_forward(x, 3)
    # Row 0 has 2 nonzeros: both kept, plus the first zero. Row 1: the three 2s (ties by index).
    assert reference.abs_topk_kept(y, 3).tolist() == [
        [True, True, False, True, False],
        [True, True, True, False, False],
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "width"), [(65536, 1024), (16384, 4096), (4096, 8192)])
def test_abs_topk_kernel_at_model_shapes(dtype: torch.dtype, rows: int, width: int) -> None:
    check_abs_topk(hard_rows(rows, width, dtype, 3), width // 4)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 5), width=st.integers(1, 200), k=st.integers(0, 210))
def test_abs_topk_mask_kernel_matches_reference(
    dtype: torch.dtype, rows: int, width: int, k: int
) -> None:
    x = hard_rows(rows, width, dtype, seed=rows * 1000 + width).to(DEVICE)
    from sparse_tf.kernels.abstopk import abs_topk_mask as kernel_mask

    expected = reference.topk_mask(x.abs(), k)
    if 0 < k < width:
        assert torch.equal(kernel_mask(x, k), expected)
    assert torch.equal(kernels.abs_topk_mask(x, k), expected)


@pytest.mark.interpreter
def test_projection_is_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_tf import SparsityConfig, project_weights_

    small = {"d_model": 16, "vocab_size": 32, "n_layer": 1}
    model = tiny_model(**small).to(DEVICE)
    with torch.no_grad():  # ties inside neurons: the protection must break them by index
        model.blocks[0].mlp.out_proj.weight[:, :8] = 0.5
    cfg = SparsityConfig(l0=1 / 16)
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        copy = tiny_model(**small).to(DEVICE)
        copy.load_state_dict(model.state_dict())
        project_weights_(copy, 1 / 16, cfg)
        results[backend] = copy.state_dict()
    for name, value in results["reference"].items():
        assert torch.equal(results["triton"][name], value), name


@pytest.mark.interpreter
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4),
    k_fracs=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_projection_select_kernel_matches_reference(
    shapes: list[tuple[int, int]], k_fracs: list[float], seed: int
) -> None:
    from sparse_tf.kernels.select import project_, topk_masks

    g = torch.Generator().manual_seed(seed)
    weights, protected, ks = [], [], []
    for i, (rows, cols) in enumerate(shapes):
        w = hard_rows(rows, cols, torch.float32, seed + i)  # ties, zeros, empty rows
        p = None
        if i % 2:  # protection masks, some of them transposed views (column neurons)
            p = torch.rand(rows, cols, generator=g) < 0.1
            p = p.T.contiguous().T if i % 4 == 3 else p
        weights.append(w.to(DEVICE))
        protected.append(p.to(DEVICE) if p is not None else None)
        ks.append(max(1, min(w.numel(), round(k_fracs[i] * w.numel()))))
    # Small chunks: matrices span several programs, and ties straddle chunk boundaries.
    masks = topk_masks(weights, protected, ks, chunk=64)
    projected = [w.clone() for w in weights]
    project_(projected, protected, ks, chunk=64)
    for w, p, k, mask, after in zip(weights, protected, ks, masks, projected, strict=True):
        score = w.abs() if p is None else w.abs().masked_fill(p, torch.inf)
        expected = reference.topk_mask(score.reshape(1, -1), k).view_as(w)
        assert torch.equal(mask, expected)
        assert torch.equal(after, w.masked_fill(~expected, 0.0))


@pytest.mark.gpu
def test_projection_select_kernel_at_paper_shapes() -> None:
    from sparse_tf.kernels.select import topk_masks

    shapes = [(2048, 1024), (3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
    weights = [hard_rows(r, c, torch.float32, i).to(DEVICE) for i, (r, c) in enumerate(shapes)]
    protected = [None, *(torch.rand(r, c, device=DEVICE) < 0.004 for r, c in shapes[1:])]
    ks = [w.numel() // 64 for w in weights]
    for w, p, k, mask in zip(
        weights, protected, ks, topk_masks(weights, protected, ks), strict=True
    ):
        score = w.abs() if p is None else w.abs().masked_fill(p, torch.inf)
        assert torch.equal(mask, reference.topk_mask(score.reshape(1, -1), k).view_as(w))


@pytest.mark.gpu
def test_graphed_projection_equals_eager_and_reference_through_an_anneal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA-graph replay of the projection (K changing every step, as during the L0 anneal;
    a second model forcing a recapture) keeps exactly the reference's entries."""
    from sparse_tf import GPT, GPTConfig, SparsityConfig, project_weights_
    from sparse_tf.kernels import graphs

    cfg = GPTConfig(vocab_size=2048, n_ctx=64, n_layer=2, d_model=256)
    sparsity = SparsityConfig(l0=1 / 64)
    for seed in (0, 1):  # a second model: new tensors (recapture) or reused addresses
        torch.manual_seed(seed)
        start = GPT(cfg).state_dict()
        results = {}
        for mode, env in (
            ("graph", ("auto", "1")),
            ("eager", ("auto", "0")),
            ("ref", ("reference", "1")),
        ):
            monkeypatch.setenv("SPARSE_TF_KERNELS", env[0])
            monkeypatch.setenv("SPARSE_TF_CUDA_GRAPHS", env[1])
            model = GPT(cfg).to(DEVICE)
            model.load_state_dict(start)
            torch.manual_seed(100 + seed)  # the same "Adam steps" in every mode
            states = []
            for l0 in (0.5, 0.25, 0.1, 1 / 64, 1 / 64):
                with torch.no_grad():  # an "Adam step": perturb, so every projection has work
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 1e-3 * (p != 0))
                project_weights_(model, l0, sparsity)
                states.append({n: (p != 0).cpu() for n, p in model.named_parameters()})
            results[mode] = states
        assert any(key[0] == "projection" for key in graphs._GRAPHS)
        for step, ref in enumerate(results["ref"]):
            for name, mask in ref.items():
                assert torch.equal(results["graph"][step][name], mask), (seed, step, name)
                assert torch.equal(results["eager"][step][name], mask), (seed, step, name)
    graphs.clear()


def test_graph_cache_keeps_one_capture_per_tensor_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture cache's policy (CPU: the capture itself is replaced by a stand-in; the gpu
    test above runs real captures). Alternating models replay their own capture; beyond
    MAX_GRAPHS sets of tensors the least recently used capture goes."""
    from sparse_tf.kernels import graphs

    captures: list[object] = []
    replays: list[int] = []

    class Replayed:
        def replay(self) -> None:
            replays.append(1)

    def capture(key: object, fn: object, ints: list[int], device: torch.device) -> object:
        captures.append(key)
        return graphs._Graph(key, Replayed(), torch.tensor(ints, dtype=torch.int32), ints)  # type: ignore[arg-type]

    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setenv("SPARSE_TF_CUDA_GRAPHS", "1")
    graphs.clear()
    models = [[torch.zeros(3), torch.zeros(2, 2)] for _ in range(graphs.MAX_GRAPHS + 1)]

    def step(model: list[torch.Tensor], static: object = None) -> None:
        graphs.graphed("projection", lambda k: None, [1, 2], model, static)

    for _ in range(3):
        step(models[0])
        step(models[1])
    assert len(captures) == 2
    assert len(replays) == 6
    n = graphs.MAX_GRAPHS
    for model in models:  # n - 1 new tensor sets: the last evicts models[0], the oldest
        step(model)
    assert len(captures) == n + 1
    assert len(graphs._GRAPHS) == n
    step(models[1])  # still kept
    assert len(captures) == n + 1
    step(models[0])  # evicted: captured again
    assert len(captures) == n + 2
    step(models[0], static=(4, (0, 1)))  # other protection settings: another capture
    assert len(captures) == n + 3
    graphs.clear()
