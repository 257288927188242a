"""The `sparse-tf` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sparse_tf.cli import main

PAPER = [
    "--model.vocab-size",
    "2048",
    "--model.n-ctx",
    "256",
    "--model.n-layer",
    "8",
    "--model.d-model",
    "1024",
]


def test_describe_reports_the_paper_preset_budget(capsys: pytest.CaptureFixture[str]) -> None:
    main(["describe", *PAPER, "--sparsity.l0", "0.015625"])
    out = capsys.readouterr().out
    assert "8 layers, d_model 1024, 64 heads x 16, d_mlp 4096" in out
    assert "k = 256 of d_model, 256 of q/k/v, 1024 of d_mlp" in out
    # Block matrices at 1/64, embeddings at 4/64; 8 x (3+1+4+4) M + 2 x 2 M entries.
    assert "blocks.7.mlp.out_proj.weight" in out
    assert "65,536" in out
    assert "104,857,600" in out
    assert "1,835,008" in out


def test_describe_shows_protection_winning_on_small_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(
        [
            "describe",
            "--model.vocab-size",
            "512",
            "--model.n-ctx",
            "64",
            "--model.n-layer",
            "2",
            "--model.d-model",
            "64",
            "--sparsity.l0",
            "0.015625",
        ]
    )
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("blocks.0.attn.qkv")
    )
    assert line.split()[-3:] == ["768", "0.0625", "rows"]  # 192 rows x 4 > 12,288 / 64


def test_bad_config_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["describe", "--model.vocab-size", "10", "--model.n-ctx", "8", "--model.n-layer", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--model.d-model", "100"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "sparse-tf describe: error: GPTConfig.d_model=100: must be a multiple of d_head=16"
    ]


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sparse_tf.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "describe" in result.stdout
    assert "train" in result.stdout


def test_unknown_command_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'; choose from ['train', " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["describe", "--model.vocab-size", "10"],
            "sparse-tf describe: error: Missing from sparse-tf describe: --model.n-ctx, "
            "--model.n-layer, --model.d-model (see sparse-tf describe --help)",
        ),
        (
            ["train", "--wandb", "maybe"],
            "sparse-tf train: error: invalid choice 'maybe' for argument '--wandb'. Expected one "
            "of ('auto', 'offline', 'online', 'disabled'). (see sparse-tf train --help)",
        ),
        (
            ["train", "--model.d-model", "abc"],
            "sparse-tf train: error: Error parsing --model.d-model: invalid literal for int() "
            "with base 10: 'abc' (see sparse-tf train --help)",
        ),
    ],
)
def test_flag_errors_are_one_line_with_status_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_a_closed_pipe_ends_the_output_quietly() -> None:
    """`sparse-tf tasks --show 20 | head -1`: no traceback when the reader goes away."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparse_tf.cli", "tasks", "--show", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the output is far larger than a pipe buffer
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_an_interrupted_training_command_says_how_to_resume(tmp_path: Path) -> None:
    """Ctrl-C before the run folder holds a run: the same command again; once it holds one
    (run.json): --resume with the run's --out, which needs no other flag."""
    from sparse_tf.cli.commands import _train_interrupted
    from sparse_tf.filenames import RUN_FILE
    from sparse_tf.training import TrainingStopped

    out = tmp_path / "run"
    argv = ["--preset", "tiny-cpu", "--out", str(out), "--max-steps", "5"]
    early = _train_interrupted(KeyboardInterrupt(), "sparse-tf train", argv, out)
    assert (early.resume, early.status) == (["sparse-tf", "train", *argv], 130)
    out.mkdir()
    (out / RUN_FILE).write_text("{}")
    late = _train_interrupted(KeyboardInterrupt(), "sparse-tf bridge", argv, out)
    assert late.resume == ["sparse-tf", "bridge", "--out", str(out), "--resume"]
    stopped = _train_interrupted(
        TrainingStopped("SIGTERM", 7, "x/step-7"), "sparse-tf train", [], out
    )
    assert str(stopped) == "stopped by SIGTERM after step 7; checkpoint x/step-7 is complete"
    assert (stopped.resume, stopped.status) == (
        ["sparse-tf", "train", "--out", str(out), "--resume"],
        143,
    )


def test_wandb_auto_logs_offline_where_wandb_is_installed() -> None:
    """The other side of test_install's core run (wandb missing: disabled, said once)."""
    pytest.importorskip("wandb")
    from sparse_tf.log import wandb_mode

    assert wandb_mode("auto") == ("offline", None)
    assert wandb_mode("disabled") == ("disabled", None)
