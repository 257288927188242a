"""The analyses end to end (`sparse-tf analyze`, `sparse_tf.analysis.studies`) and their
model-facing pieces: the readout's Jacobian Gram, SAEs, the optimal loss of the 5-factor
process. The ACE reproduction runs in full (it trains in seconds); rotation and factored run
on small models, checked on what must hold whatever the training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_tf import GPT
from sparse_tf.analysis.ace import jacobian_observability
from sparse_tf.analysis.linalg import haar_orthogonal
from sparse_tf.analysis.sae import SAEConfig, sae_explained_variance, train_sae
from sparse_tf.analysis.studies.common import StudyModel
from sparse_tf.analysis.studies.factored import optimal_loss, run_factored
from sparse_tf.cli import main
from sparse_tf.data.processes import factored_process
from sparse_tf.data.synthetic import symbol_tokenizer
from sparse_tf.model import GPTConfig


def test_jacobian_observability_is_the_gram_of_the_readout() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 8, dtype=torch.float64)
    acts = torch.randn(16, 8, dtype=torch.float64)
    assert np.allclose(jacobian_observability(lambda h: w @ h, acts), (w.T @ w).numpy())
    norm = torch.nn.RMSNorm(8, dtype=torch.float64)  # nonlinear: the Jacobian varies with h
    grams = [
        torch.autograd.functional.jacobian(lambda h: w @ norm(h), a).T
        @ torch.autograd.functional.jacobian(lambda h: w @ norm(h), a)
        for a in acts
    ]
    expected = torch.stack(grams).mean(0).detach().numpy()
    assert np.allclose(jacobian_observability(lambda h: w @ norm(h), acts), expected)


def test_an_sae_learns_a_planted_dictionary_and_only_in_its_frame() -> None:
    rng = np.random.default_rng(0)
    d, atoms = 16, 48
    dictionary = rng.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)

    def sample(n: int) -> np.ndarray:
        codes = np.zeros((n, atoms))
        rows = np.arange(n)[:, None]
        codes[rows, rng.integers(0, atoms, (n, 2))] = rng.exponential(1.0, (n, 2))
        return 3.0 * codes @ dictionary + 1.0

    sae = train_sae(sample(8000), SAEConfig(expansion=4, steps=800, seed=0))
    assert torch.allclose(sae.w_dec.norm(dim=0), torch.ones(4 * d), atol=1e-5)
    test = sample(2000)
    own = sae_explained_variance(sae, test)
    rotated = sae_explained_variance(sae, test @ haar_orthogonal(d, rng))
    assert own > 0.85
    assert rotated < own - 0.2  # the dictionary's directions are the SAE's, not any basis's
    with pytest.raises(ValueError, match="constant"):
        train_sae(np.ones((10, 4)))


def test_optimal_loss_of_the_factored_process() -> None:
    rng = np.random.default_rng(0)
    uniform = factored_process(1.0)  # every token uniform: the loss is ln 432 exactly
    tokens, beliefs = uniform.sample(50, 8, rng)
    assert optimal_loss(uniform, tokens, beliefs) == pytest.approx(math.log(432))
    clean = factored_process(0.0)
    tokens, beliefs = clean.sample(2000, 8, rng)
    assert 5.85 < optimal_loss(clean, tokens, beliefs) < 5.95  # below uniform: beliefs help


@pytest.mark.slow
def test_analyze_ace_reproduces_the_markov_core(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's Markov experiment in full on the CPU: rank-3 cores, keep = Bayes accuracy,
    remove = chance, the chain's eigenvalues, CCA-aligned cores at chance-level overlap."""
    out = tmp_path / "ace"
    argv = ["analyze", "ace", "--kinds", "dense", "--out", str(out), "--device", "cpu"]
    main([*argv, "--sequences", "1000"])
    printed = capsys.readouterr().out
    assert "ACE, Markov chain: dense models" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["analysis"] == "ace"
    assert report["versions"]["torch"]
    models = report["report"]["models"]
    assert len(models) == 2
    for m in models:
        assert m["rank"] == 3
        assert abs(m["accuracy"] - m["bayes_accuracy"]) < 0.01
        assert abs(m["keep"] - m["accuracy"]) < 0.01
        assert m["remove"] < 0.32  # chance is 0.25
        assert m["eigenvalue_error"] < 0.02
        assert m["r2"] / m["r2_oracle"] > 0.95
    (pair,) = report["report"]["pairs"]
    assert pair["overlap"] < 3 * pair["overlap_baseline"]
    assert min(pair["cca"]) > 0.9
    # Run again: the finished models are reused, not retrained.
    stamp = (out / "models" / "dense-seed0" / "final" / "model.safetensors").stat().st_mtime_ns
    main([*argv, "--sequences", "200"])
    assert (
        out / "models" / "dense-seed0" / "final" / "model.safetensors"
    ).stat().st_mtime_ns == stamp
    assert "already complete" in capsys.readouterr().err


@pytest.mark.slow
def test_analyze_rotation_of_a_model_against_itself_and_another(tmp_path: Path) -> None:
    out = tmp_path / "rot"
    small = ["--fit-windows", "16", "--test-windows", "8", "--sae-steps", "30", "--device", "cpu"]
    main(["analyze", "rotation", "--kinds", "sparse", "--steps", "20", "--out", str(out), *small])
    sites = json.loads((out / "report.json").read_text())["report"]["sites"]
    assert [s["site"] for s in sites] == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ]
    for s in sites:
        assert s["ev_linear"] >= s["ev_rotated"] - 1e-6  # a rotation is one linear map
        assert s["distance_to_identity"] > 1.0  # two seeds: not the same basis
    # A model against itself: R = I, nothing to explain away, the SAE transfers perfectly.
    model = out / "models" / "sparse-seed0" / "final"
    main(
        [
            "analyze",
            "rotation",
            "--models",
            str(model),
            str(model),
            "--out",
            str(tmp_path / "self"),
            *small,
        ]
    )
    for s in json.loads((tmp_path / "self" / "report.json").read_text())["report"]["sites"]:
        assert s["distance_to_identity"] < 1e-4
        assert s["ev_raw"] == pytest.approx(1.0)
        assert s["ev_rotated"] == pytest.approx(1.0)
        assert s["distance_to_signed_permutation"] < 1e-4
        assert s["sae_raw"] == pytest.approx(s["sae_self"]) == pytest.approx(s["sae_rotated"])
        assert s["ev_shuffled"] < 0.5  # mispaired rows explain (next to) nothing


def test_factored_study_on_a_small_model(tmp_path: Path) -> None:
    process = factored_process()
    symbol_tokenizer([f"t{i}" for i in range(process.vocab)]).save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=433, n_ctx=9, n_layer=1, d_model=32, bigram=False, pos_emb=True)
    model = GPT(cfg).eval()
    study = run_factored(
        [StudyModel("tiny", "given", tmp_path, model)], sequences=300, frozen=2, batch=20
    )
    assert (study.factored_dims, study.factored_rank, study.joint_rank) == (9, 10, 242)
    trained, untrained = study.models
    assert trained.trained
    assert not untrained.trained
    # Without a run.json the initialisation is seed 0's: the same weights as `model`.
    assert untrained.dims == trained.dims
    assert untrained.loss == pytest.approx(trained.loss)
    assert len(trained.vary_dims) == 5
    assert trained.vary_union <= 32
    assert trained.baseline_k1 == pytest.approx(1 / 32)
    assert trained.optimal_loss < trained.loss  # an untrained model is no Bayes predictor
    assert "Factored representations" in study.table()


def test_analyze_refuses_bad_requests(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["analyze", "acee"], "unknown analysis 'acee'"),
        (["analyze", "rotation", "--seeds", "1"], "give --seeds >= 2"),
        (["analyze", "factored", "--noise", "1.5"], "--noise 1.5: must be in [0, 1]"),
        (["analyze", "ace", "--seeds", "0"], "--seeds 0: must be >= 1"),
        (["analyze", "rotation", "--sae-steps", "0"], "--sae-steps 0: must be >= 1"),
        (["analyze", "ace", "--threshold", "1.5"], "--threshold 1.5: must be in (0, 1]"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    main(["analyze", "--help"])
    assert "rotation" in capsys.readouterr().out


def test_studies_refuse_models_they_cannot_compare(tmp_path: Path) -> None:
    from sparse_tf.analysis.studies.common import StudyError
    from sparse_tf.analysis.studies.rotation_dyck import run_rotation

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=7, n_ctx=16, n_layer=1, d_model=32)
    deeper = GPTConfig(vocab_size=7, n_ctx=16, n_layer=2, d_model=32)
    pair = [StudyModel(n, "given", tmp_path, GPT(c)) for n, c in (("a", cfg), ("b", deeper))]
    with pytest.raises(StudyError, match=r"one depth and residual width.*\(1, 32\), \(2, 32\)"):
        run_rotation(pair)
    with pytest.raises(StudyError, match="at least two models of one kind"):
        run_rotation(pair[:1])
    # The untrained baseline's seed comes from the run; a run.json without one is an error.
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "run.json").write_text('{"config": {}}')
    symbol_tokenizer([f"t{i}" for i in range(432)]).save(str(run / "final" / "tokenizer.json"))
    model = StudyModel("m", "given", run / "final", GPT(cfg))
    with pytest.raises(StudyError, match=r"run\.json: no config\.seed"):
        run_factored([model], sequences=10, frozen=1, batch=2)
