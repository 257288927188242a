"""Bad values and bad places: refused before any work, in one line naming the field, flag or
path (never a traceback), and nothing half-written is left where a good file stood."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from sparse_tf import OptimConfig, checkpoint, load_model
from sparse_tf.checkpoint import CheckpointError, export_model, list_checkpoints, verify
from sparse_tf.cli import main
from sparse_tf.config import ConfigError
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.evaluation import MAX_PAIRS, EvalError, evaluate_model
from sparse_tf.filenames import MEANS_FILE
from sparse_tf.pruning import MeansError, PruneConfig, prune_model
from sparse_tf.training import TrainingError, train
from tests.helpers import quiet_options, tiny_train_config, tiny_train_flags


@pytest.mark.parametrize("field", ["lr", "eps", "weight_decay", "grad_rms"])
def test_infinite_optimizer_values_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"OptimConfig\.{field}=inf: must be finite"):
        OptimConfig(**{field: math.inf})


def test_micro_batch_size_zero_is_refused(corpus: Path) -> None:
    with pytest.raises(ConfigError, match=r"micro_batch_size=0: must be >= 1"):
        tiny_train_config(corpus, micro_batch_size=0)
    unset = tiny_train_config(corpus)  # None still means the whole batch
    assert unset.micro_batch_size is None
    assert unset.micro == unset.batch_size


def test_target_loss_at_or_above_chance_is_refused() -> None:
    for bad in (1e9, math.log(2), 0.0):
        with pytest.raises(ConfigError, match="target_loss"):
            PruneConfig(target_loss=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 10**9}, rf"n=1000000000 \(--n\): must be in \[1, {MAX_PAIRS}\]"),
        ({"pairs_per_batch": 0}, r"pairs_per_batch=0 \(--batch-size\): must be in \[1, "),
        ({"val_windows": -1}, r"val_windows=-1 \(--val-windows\): must be >= 0"),
    ],
)
def test_eval_arguments_out_of_range(kwargs: dict, message: str, trained: Path) -> None:
    with pytest.raises(EvalError, match=message):
        evaluate_model(trained, "single_double_quote", **kwargs)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--optim.eps", "inf"], "OptimConfig.eps=inf: must be finite"),
        (["train", "--micro-batch-size", "0"], "micro_batch_size=0: must be >= 1"),
        (["eval", "--batch-size", "0"], "pairs_per_batch=0 (--batch-size)"),
        (["prune", "--task", "single_double_quote", "--target-loss", "1e9"], "target_loss"),
    ],
)
def test_bad_values_on_the_command_line_are_one_line(
    argv: list[str], needle: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {"train": ["--out", str(tmp_path / "o")], "eval": ["--model", str(trained)]}
    extra["prune"] = ["--model", str(trained), "--out", str(tmp_path / "p")]
    with pytest.raises(SystemExit) as e:
        main([*argv, *extra[argv[0]]])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err


def test_means_of_another_model_are_refused(trained: Path, tmp_path: Path) -> None:
    """Same shapes, other weights: the means file's digest says it is not this model's."""
    first = tmp_path / "first"
    cfg = PruneConfig(steps=4, batch_pairs=8, n_train=16, n_val=16, n_test=16, curve_points=4)
    prune_model(trained, "single_double_quote", first, cfg, mean_windows=8, log=lambda _: None)
    other = load_model(trained)
    with torch.no_grad():
        other.unembed.weight.mul_(1.01)
    export_model(tmp_path / "other", other, load_tokenizer(trained))
    with pytest.raises(MeansError, match="computed for another model"):
        prune_model(
            tmp_path / "other", "single_double_quote", tmp_path / "second", cfg,
            means_file=first / MEANS_FILE, log=lambda _: None,
        )  # fmt: skip
    assert not (tmp_path / "second").exists()


# -- one line instead of a traceback -------------------------------------------------------


def test_eval_json_target_is_checked_before_the_work(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target, needle in [
        (tmp_path / "missing" / "r.json", "does not exist"),
        (tmp_path, "is a folder; name a file"),
    ]:
        with pytest.raises(SystemExit):
            main(["eval", "--model", str(trained), "--json", str(target)])
        err = capsys.readouterr().err.strip()
        assert f"--json {target}: " in err
        assert needle in err
        assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("flag", "value"), [("--k", "-1"), ("--n", "0")])
def test_perturb_counts_below_one_are_refused(
    flag: str, value: str, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["perturb", "--model", str(trained), flag, value])
    err = capsys.readouterr().err.strip()
    assert err == f"sparse-tf perturb: error: {flag} {value}: must be at least 1"


def test_a_sparse_folder_as_dense_model_is_one_line(trained: Path) -> None:
    from sparse_tf.bridges import BridgeError, load_gpt2

    message = rf"--dense {trained}: cannot load a GPT2LMHeadModel \(config\.json has model_type"
    with pytest.raises(BridgeError, match=message):
        load_gpt2(trained)


def test_file_system_errors_are_one_line(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file where --out's parent should be, and a full disk during a checkpoint write: the
    path and the reason, and the previous checkpoint is still whole."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    flags = ["train", "--wandb", "disabled", "--progress", "none", "--device", "cpu"]
    flags += tiny_train_flags(corpus, 8)
    with pytest.raises(SystemExit) as e:
        main([*flags, "--out", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1
    assert err == f"sparse-tf train: error: {blocker / 'run'}: Not a directory"

    from sparse_tf import checkpoint

    real = checkpoint.save_file
    calls = []

    def full_disk(tensors: dict, path: str, *args: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) > 3:  # the first checkpoint (model, optimizer, rng) fits; then it is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main([*flags, "--out", str(out), "--ckpt-every", "4"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("sparse-tf train: error: ")
    assert lines[-1].endswith(": No space left on device")
    assert [s for s, _ in list_checkpoints(out)] == [4]
    verify(out / "step-4")


def test_hand_edited_run_and_state_files_are_one_line(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_train_config(corpus, max_steps=4)
    train(cfg, quiet_options(out, ckpt_every=2, eval_every=0))
    (out / "summary.json").unlink()
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "id": 7}))
    with pytest.raises(TrainingError, match=r"run\.json: field 'id' is missing or not a str"):
        train(cfg, quiet_options(out, resume=True))
    (out / "run.json").write_text(json.dumps(info))
    state = out / "step-4" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "step": "four"}))
    (out / "step-4" / checkpoint.MANIFEST_FILE).unlink()  # edited by hand, manifest and all
    checkpoint.write_manifest(out / "step-4")
    with pytest.raises(CheckpointError, match=r"state\.json: needs integer 'step'"):
        train(cfg, quiet_options(out, resume=True))
