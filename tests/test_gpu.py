"""CUDA behaviour: bf16 autocast, the fused attention paths, device-independent kept sets (the
tie rule must give the same selection on the GPU as on the CPU), and training end to end."""

from __future__ import annotations

import copy
import gc
import shutil
from pathlib import Path

import pytest
import torch

from sparse_tf import (
    GPT,
    OptimConfig,
    SparseOptimizer,
    SparsityConfig,
    abs_topk,
    lm_loss,
    load_model,
    project_weights_,
    train,
)
from sparse_tf.log import read_metrics
from sparse_tf.sparsity import kept_count
from tests.helpers import quiet_options, sample_corpus, tiny_config, tiny_train_config, tokens

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def tie_heavy(*shape: int) -> torch.Tensor:
    """Random values with many exact ties and zeros (integers, half of them scaled)."""
    x = torch.randint(-4, 5, shape).float()
    return torch.where(torch.rand(shape) < 0.5, x, torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_abs_topk_kept_set_is_the_same_on_cpu_and_cuda(dtype: torch.dtype) -> None:
    x = tie_heavy(512, 1024).to(dtype)
    for k in (1, 16, 256, 700):
        cpu = abs_topk(x, k) != 0
        gpu = abs_topk(x.to(CUDA), k).cpu() != 0
        assert torch.equal(cpu, gpu), k


def test_projection_kept_set_is_the_same_on_cpu_and_cuda() -> None:
    model = GPT(tiny_config(d_model=128, vocab_size=512, pos_emb=True))
    with torch.no_grad():
        for w in model.sparse_weights():
            w.param.copy_(tie_heavy(*w.param.shape))
    on_gpu = copy.deepcopy(model).to(CUDA)
    cfg = SparsityConfig(l0=1 / 64)
    for l0 in (0.5, 1 / 16, 1 / 64):
        assert project_weights_(model, l0, cfg) == project_weights_(on_gpu, l0, cfg)
        for (name, a), b in zip(model.named_parameters(), on_gpu.parameters(), strict=True):
            assert torch.equal(a, b.cpu()), (l0, name)


def test_bf16_autocast_training_step_with_every_option() -> None:
    cfg = tiny_config(attn_sink=True, pos_emb=True, bigram=True)
    model = GPT(cfg).to(CUDA)
    opt = SparseOptimizer(model, OptimConfig(), SparsityConfig(l0=1 / 16), total_steps=4)
    x = tokens(cfg, batch=8).to(CUDA)
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
            loss = lm_loss(logits, x)
        # bf16 unembedding + the fp32 bigram table: fp32 logits, as in the official model.
        assert logits.dtype == torch.float32
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        assert model.blocks[0].attn.sink_logit.grad.abs().sum() > 0  # the sink mask trains
        stats = opt.step()
        opt.zero_grad()
    assert stats.l0 == 1 / 16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_abstopk_sites_keep_exactly_k_under_autocast() -> None:
    cfg = tiny_config()
    model = GPT(cfg).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, cache = model.run_with_cache(tokens(cfg).to(CUDA))
    for name in ("blocks.0.attn.hook_q", "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_post"):
        width = cache[name].shape[-1]
        assert ((cache[name] != 0).sum(-1) == width // 4).all(), name


@pytest.mark.parametrize("attn_sink", [False, True])
def test_explicit_pattern_path_matches_fused_attention_on_cuda(attn_sink: bool) -> None:
    cfg = tiny_config(attn_sink=attn_sink)
    model = GPT(cfg).to(CUDA)
    if attn_sink:
        with torch.no_grad():
            for b in model.blocks:
                b.attn.sink_logit.copy_(torch.randn(cfg.n_head))
    x = tokens(cfg).to(CUDA)
    fused = model(x)
    explicit = model.run_with_hooks(
        x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: t.clone())]
    )
    torch.testing.assert_close(explicit, fused, rtol=1e-4, atol=1e-4)
    # Caching every activation runs the norms unfused (torch's RMSNorm, then AbsTopK): the
    # same logits to rounding, not bit for bit (tests/test_kernels.py checks both paths).
    logits, _ = model.run_with_cache(x)
    torch.testing.assert_close(logits, fused, rtol=1e-4, atol=1e-4)


def test_cuda_optimizer_steps_track_the_cpu_reference() -> None:
    """Fused CUDA Adam vs the CPU path, fp32: same weights to rounding, same kept sets."""
    cfg = tiny_config(vocab_size=64, n_ctx=32)
    cpu_model = GPT(cfg)
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    scfg = SparsityConfig(l0=1 / 16, anneal_start=0.0, anneal_end=0.3)
    x = tokens(cfg, batch=8)
    opts = [SparseOptimizer(m, OptimConfig(), scfg, total_steps=10) for m in (cpu_model, gpu_model)]
    for _ in range(10):
        for model, opt, inp in zip((cpu_model, gpu_model), opts, (x, x.to(CUDA)), strict=True):
            lm_loss(model(inp), inp).backward()
            opt.step()
            opt.zero_grad()
    mismatched = total = 0
    for (name, a), b in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        b = b.detach().cpu()
        torch.testing.assert_close(a.detach(), b, rtol=1e-3, atol=1e-4, msg=name)
        mismatched += int(((a != 0) != (b != 0)).sum())
        total += a.numel()
    # A kept set can only differ where rounding reorders two magnitudes at the threshold.
    assert mismatched <= 1e-3 * total, mismatched


@pytest.mark.gpu
def test_training_on_cuda_checkpoints_resumes_and_loads_on_cpu(tmp_path: Path) -> None:
    corpus = sample_corpus(tmp_path / "corpus")
    cfg = tiny_train_config(corpus)
    full = tmp_path / "full"
    train(cfg, quiet_options(full, device="cuda"))
    records = read_metrics(full)
    assert all(r["perf/gpu_mem_gib"] > 0 for r in records if "perf/step_ms" in r)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / "run.json", resumed / "run.json")
    shutil.copytree(full / "step-4", resumed / "step-4")
    train(cfg, quiet_options(resumed, device="cuda", resume=True))
    a = [r["train/loss"] for r in read_metrics(full) if "train/loss" in r]
    b = [r["train/loss"] for r in read_metrics(resumed) if "train/loss" in r]
    assert len(a) == 12
    assert len(b) == 8  # steps 5-12, after the step-4 checkpoint
    assert b == pytest.approx(a[4:], rel=1e-3)  # GPU kernels need not be bit-reproducible

    model = load_model(full / "final")  # trained on the GPU, loaded on the CPU
    assert next(model.parameters()).device.type == "cpu"
    for w in model.sparse_weights():
        assert int(torch.count_nonzero(w.param)) == kept_count(w, cfg.sparsity.l0, cfg.sparsity)


def test_compiled_model_trains_like_the_eager_one() -> None:
    """Under torch.compile the kernels run as opaque custom operators: the same loss and
    gradients as the eager model (bf16 autocast, every AbsTopK site, the fused paths)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(d_model=256, vocab_size=512, n_ctx=64)).to(CUDA)
    x = tokens(model.cfg, batch=8, seq=64).to(CUDA)
    results = []
    for forward in (model, torch.compile(model)):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(forward(x), x)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager_loss, eager), (compiled_loss, compiled) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-2, atol=1e-2)
    for name, g in eager.items():
        err = ((compiled[name] - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err < 5e-2, (name, err)


def test_compiled_training_follows_the_eager_run(tmp_path: Path) -> None:
    """`RunOptions.compile`: the trainer's compiled steps follow the eager run's losses,
    through the L0 anneal, micro-batches and a validation in eval mode between steps (the
    eager model; the compiled one must not be disturbed by it)."""
    corpus = sample_corpus(tmp_path / "corpus")
    cfg = tiny_train_config(corpus, batch_size=8, micro_batch_size=4)
    losses = []
    for compile_mode in ("none", "default"):
        out = tmp_path / compile_mode
        train(cfg, quiet_options(out, device="cuda", compile=compile_mode))
        losses.append([r["train/loss"] for r in read_metrics(out) if "train/loss" in r])
        assert any("val/loss" in r for r in read_metrics(out))
    eager, compiled = losses
    assert len(compiled) == len(eager) == cfg.max_steps
    assert compiled == pytest.approx(eager, rel=2e-2)


@pytest.mark.parametrize("kernels", ["auto", "triton"])
def test_cuda_graph_training_follows_the_eager_run(
    tmp_path: Path, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`RunOptions.cuda_graphs`: each micro-batch replayed from one captured graph gives the
    eager run's losses (the same kernels; replays must read the updated weights and accumulate
    two micro-batches' gradients in place), through the L0 anneal and validations between
    steps. `triton`: every marked layer on the sparse kernel, so the replays read formats
    rebuilt after every optimizer step."""
    monkeypatch.setenv("SPARSE_TF_KERNELS", kernels)
    corpus = sample_corpus(tmp_path / "corpus")
    cfg = tiny_train_config(corpus, batch_size=8, micro_batch_size=4)
    losses = []
    for graphs in (False, True):
        out = tmp_path / str(graphs)
        train(cfg, quiet_options(out, device="cuda", cuda_graphs=graphs))
        losses.append([r["train/loss"] for r in read_metrics(out) if "train/loss" in r])
        assert any("val/loss" in r for r in read_metrics(out))
    eager, graphed = losses
    assert len(graphed) == len(eager) == cfg.max_steps
    assert graphed == pytest.approx(eager, rel=1e-3)


def test_graphed_sparse_products_follow_the_weights_through_an_anneal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CUDA graph of forward + backward with the sparse products inside (`GraphedProducts`):
    at every step of an L0 anneal its gradients equal the eager ones on the same weights (the
    formats are rebuilt in place before each replay, the capture kept), and a weight modified
    without being marked again makes `refresh` ask for a new capture."""
    from sparse_tf.linear import GraphedProducts, SparseLinear

    monkeypatch.setenv("SPARSE_TF_KERNELS", "triton")  # every marked layer on the sparse kernel
    torch.manual_seed(0)
    model = GPT(tiny_config(d_model=128, n_layer=2, vocab_size=256, n_ctx=64)).to(CUDA)
    opt = SparseOptimizer(model, OptimConfig(), SparsityConfig(l0=1 / 16, anneal_end=0.8), 8)
    params = [p for p in model.parameters() if p.requires_grad]
    tok = torch.randint(0, 256, (4, 64), device=CUDA)

    def forward_backward() -> torch.Tensor:
        loss = lm_loss(model(tok), tok)
        loss.backward()
        return loss.detach()

    def eager_grads() -> list[torch.Tensor]:
        """On a side stream, as a capture's warm-up must be: formats built, kernels compiled."""
        for p in params:
            p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        return [p.grad.clone() for p in params]  # type: ignore[union-attr]

    eager_grads()  # marks nothing yet: the first optimizer step does
    opt.step()
    products, graph = GraphedProducts(), torch.cuda.CUDAGraph()
    grads = [torch.zeros_like(p) for p in params]  # what the graph accumulates into
    for step in range(6):
        expected = eager_grads()
        for p, g in zip(params, grads, strict=True):
            p.grad = g.zero_()
        if step == 0:
            with products.recording(), torch.cuda.graph(graph):
                forward_backward()
        else:
            assert products.refresh(), step  # kept shrinks in the anneal: same tensors
        graph.replay()
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-5)
        opt.step()
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    sparse = [p for p in products._products if p.plan.any]
    assert len(sparse) == len(layers) > 0  # every layer's products came from the formats
    with torch.no_grad():
        layers[0].weight.mul_(1.5)  # behind the layers' back: no longer marked
    assert not products.refresh()


@pytest.mark.parametrize("graphs", [False, True])
def test_a_finished_run_gives_its_gpu_memory_back(tmp_path: Path, graphs: bool) -> None:
    """After train() returns, nothing of the run stays alive or allocated, without waiting for
    Python's garbage collector (off here): the next run in the same process (a sweep, a
    benchmark, `sparse-tf analyze`) starts with the memory. A run in a reference cycle, or its
    graphs left captured, would keep its model, optimizer and activations on the GPU."""
    from sparse_tf.kernels import graphs as kernel_graphs
    from sparse_tf.training.graphs import GraphedMicroBatch

    def settled() -> int:
        # cuBLAS keeps a workspace per stream it ran on (capture and warm-up streams come from
        # torch's pool): the library's, not the run's; dropped before each reading.
        torch.cuda.synchronize()
        torch._C._cuda_clearCublasWorkspaces()
        return torch.cuda.memory_allocated()

    corpus = sample_corpus(tmp_path / "corpus")
    cfg = tiny_train_config(corpus, batch_size=8, micro_batch_size=4)
    # Captures that earlier tests in this process left (of models that never went through
    # train(), which alone releases them) are not this run's to release.
    kernel_graphs.clear()
    # The same run once first: kernels compiled, process-wide caches (layouts) made.
    train(cfg, quiet_options(tmp_path / "warm", device="cuda", cuda_graphs=graphs))
    gc.collect()
    before = settled()
    captures = len(kernel_graphs._GRAPHS)
    gc.disable()
    try:
        train(cfg, quiet_options(tmp_path / "run", device="cuda", cuda_graphs=graphs))
        kinds = (GPT, SparseOptimizer, GraphedMicroBatch)
        alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)]
        left = settled() - before
    finally:
        gc.enable()
    assert alive == []
    assert len(kernel_graphs._GRAPHS) == captures == 0  # the projection's capture released
    assert left <= 2**20, f"{left / 2**20:.1f} MiB still allocated after train() returned"
