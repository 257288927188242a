"""Values that are accepted but meaningless are refused, in one line naming the field or flag."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sparse_tf import OptimConfig, load_model
from sparse_tf.checkpoint import export_model
from sparse_tf.cli import main
from sparse_tf.config import ConfigError
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.evaluation import MAX_PAIRS, EvalError, evaluate_model
from sparse_tf.pruning import MeansError, PruneConfig, prune_model
from sparse_tf.pruning.circuit import MEANS_FILE
from tests.helpers import tiny_train_config


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
