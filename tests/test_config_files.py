"""Config files: `--config FILE.toml` (preset < file < flags), `--print-config`, the one-line
errors naming the file and the key, and the run folder's config.toml, which trains the same
run again."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from sparse_tf.cli import main
from sparse_tf.cli.commands import TRAIN_FILE_EXCLUDE, parse_train
from sparse_tf.config_files import to_toml
from sparse_tf.filenames import RUN_TOML_FILE
from sparse_tf.log import read_metrics
from sparse_tf.presets import PRESETS, preset
from sparse_tf.training.run_folder import is_run_output, run_toml
from tests.helpers import tiny_train_flags


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `sparse-tf ARGV --print-config` writes (it must exit 0 without running)."""
    main([*argv, "--print-config"])
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(PRESETS))
def test_print_config_reads_back_to_the_same_config_for_every_preset(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, config = parse_train(["--preset", name], bridged=False)
    assert config == preset(name)
    printed = _printed(capsys, "train", "--preset", name)
    assert tomllib.loads(printed)["preset"] == name
    file = _write(tmp_path / "printed.toml", printed)
    again, again_config = parse_train(["--config", file], bridged=False)
    assert (again_config, again.run, again.preset) == (config, args.run, name)
    # The run folder's file names no preset (the trainer does not know it): every field is
    # written, so it reads back the same over the default preset's values too.
    file = _write(tmp_path / "config.toml", run_toml(config, args.run))
    again, again_config = parse_train(["--config", file], bridged=False)
    assert (again_config, again.run) == (config, args.run)


def test_none_values_are_written_as_the_string_none(tmp_path: Path) -> None:
    # Fields that are None where the starting point has a number (AbsTopK off, the
    # embeddings' own ratio, no gradient normalisation) and the reverse (no micro-batches
    # over a preset that has them): each must read back as it was.
    args, config = parse_train(
        [
            "--preset", "paper-d1024", "--model.afrac", "None", "--sparsity.embed-mult", "None",
            "--optim.grad-rms", "None", "--micro-batch-size", "None", "--eval-windows", "None",
        ],
        bridged=False,
    )  # fmt: skip
    text = to_toml(args, exclude=TRAIN_FILE_EXCLUDE)
    table = tomllib.loads(text)
    assert table["model"]["afrac"] == table["micro_batch_size"] == table["eval_windows"] == "None"
    again, again_config = parse_train(
        ["--config", _write(tmp_path / "n.toml", text)], bridged=False
    )
    assert again_config == config
    assert (config.model.afrac, config.sparsity.embed_mult, config.optim.grad_rms) == (None,) * 3
    assert (config.micro_batch_size, again.run.eval_windows) == (None, None)


def test_bridged_config_round_trips(tmp_path: Path) -> None:
    argv = ["--preset", "tiny-cpu", "--dense", "dense-gpt2", "--bridge.nmse", "0.5"]
    args, config = parse_train(argv, bridged=True)
    file = _write(tmp_path / "b.toml", run_toml(config, args.run))
    assert tomllib.loads(Path(file).read_text())["bridge"]["dense"] == "dense-gpt2"
    assert parse_train(["--config", file], bridged=True)[1] == config
    with pytest.raises(Exception, match=r"b\.toml: bridge: unknown key"):
        parse_train(["--config", file], bridged=False)  # a plain run has no [bridge]


def test_preset_then_file_then_flags(tmp_path: Path) -> None:
    file = _write(
        tmp_path / "run.toml",
        'preset = "circuits-d512"\nmax_steps = 7\nseed = 3\ndevice = "cpu"\n'
        "[model]\nn_layer = 3\n[optim]\nlr = 0.02\n",
    )
    args, config = parse_train(["--config", file, "--max-steps", "9"], bridged=False)
    base = preset("circuits-d512")
    assert args.preset == "circuits-d512"
    assert config.model.d_model == base.model.d_model == 512  # the preset the file names
    assert config.batch_size == base.batch_size == 64
    assert (config.model.n_layer, config.optim.lr, config.seed) == (3, 0.02, 3)  # the file
    assert config.max_steps == 9  # the flag over the file
    assert (args.run.device, args.run.out) == ("cpu", "runs/circuits-d512")
    # --preset on the command line over the file's preset; the file's values over both.
    args, config = parse_train(["--config", file, "--preset", "tiny-cpu"], bridged=False)
    assert (args.preset, config.model.d_model, config.max_steps) == ("tiny-cpu", 128, 7)
    # A width from the file gets its own d_mlp (4 x d_model), as --model.d-model does.
    file = _write(tmp_path / "w.toml", "[model]\nd_model = 256\n")
    assert parse_train(["--config", file], bridged=False)[1].model.d_mlp == 1024
    file = _write(tmp_path / "m.toml", "[model]\nd_model = 256\nd_mlp = 300\n")
    assert parse_train(["--config", file], bridged=False)[1].model.d_mlp == 300


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nd_modle = 64\n", "run.toml: model.d_modle: unknown key (did you mean d_model?)"),
        ("max_stpes = 5\n", "run.toml: max_stpes: unknown key (did you mean max_steps?)"),
        ('[optim]\nlr = "fast"\n', "run.toml: optim.lr: expected a number (got 'fast')"),
        ('[model]\nd_model = "64"\n', "run.toml: model.d_model: expected an integer (got '64')"),
        ("max_steps = 1.5\n", "run.toml: max_steps: expected an integer (got 1.5)"),
        ("model = 3\n", "run.toml: model: expected a table ([model]), got 3"),
        ("[seed]\nx = 1\n", "run.toml: seed: expected int, got a table"),
        (
            '[sparsity]\nanneal_clock = "never"\n',
            "run.toml: sparsity.anneal_clock: expected one of ['after_step', 'before_step'] "
            "(got 'never')",
        ),
        (
            "[model]\nd_model = 100\n",
            "run.toml: model.d_model=100: must be a multiple of d_head=16",
        ),
        ("max_steps = 0\n", "run.toml: max_steps=0: must be >= 1"),
        (
            "resume = true\n",
            "run.toml: resume: continues the run in --out: a command-line flag (--resume), not "
            "a config value",
        ),
        (
            'preset = "gpt5"\n',
            f"run.toml: preset: 'gpt5' is not a preset; choose from {sorted(PRESETS)}",
        ),
        (
            '[model]\narch = "hf_gpt2"\nvocab_size = 64\n',
            "run.toml: model.n_ctx: missing; arch = 'hf_gpt2' needs it",
        ),
        (
            "max_steps = 5\nbatch_size = = 4\n",
            "run.toml: invalid TOML: Invalid value (at line 2, column 14)",
        ),
    ],
)
def test_bad_files_are_one_line_naming_the_file_and_the_key(
    text: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # the file's name as given: run.toml
    Path("run.toml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "run.toml", "--print-config"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"sparse-tf train: error: {message}"]


def test_missing_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--config", str(tmp_path / "nope.toml"), "--print-config"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"sparse-tf prune: error: {tmp_path / 'nope.toml'}: no such file"
    ]


def test_prune_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The file need not hold the required flags, nor --task: they may come from the command
    # line (the file's defaults are checked together with them).
    file = _write(tmp_path / "p.toml", 'out = "circuit"\nsteps = 300\ntarget_loss = 0.2\n')
    printed = _printed(
        capsys, "prune", "--config", file, "--model", "m/final", "--task", "bracket_counting",
        "--steps", "200",
    )  # fmt: skip
    table = tomllib.loads(printed)
    assert (table["model"], table["out"], table["task"]) == (
        "m/final",
        "circuit",
        "bracket_counting",
    )
    assert (table["target_loss"], table["steps"], table["pairs"]) == (0.2, 200, "None")
    assert not {"overwrite", "config_file", "print_config"} & set(table)
    again = _printed(capsys, "prune", "--config", _write(tmp_path / "again.toml", printed))
    assert again == printed
    file = _write(tmp_path / "o.toml", "overwrite = true\n")
    with pytest.raises(SystemExit):
        main(["prune", "--config", file, "--model", "m", "--out", "o", "--task", "t"])
    assert capsys.readouterr().err.startswith(f"sparse-tf prune: error: {file}: overwrite: ")


def test_data_prepare_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = _write(tmp_path / "d.toml", 'vocab_size = 512\nworkers = 3\n[data]\nsource = "texts"\n')
    table = tomllib.loads(_printed(capsys, "data", "prepare", "--config", file, "--workers", "2"))
    assert (table["vocab_size"], table["workers"], table["data"]["source"]) == (512, 2, "texts")
    assert table["data"]["val_frac"] == 0.02  # the default


def test_analyze_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = _write(tmp_path / "a.toml", 'seeds = 3\nsae_steps = 500\nkinds = ["sparse"]\n')
    printed = _printed(capsys, "analyze", "rotation", "--config", file, "--sae-l1", "0.02")
    table = tomllib.loads(printed)
    assert (table["seeds"], table["sae_steps"], table["kinds"], table["sae_l1"]) == (
        3,
        500,
        ["sparse"],
        0.02,
    )
    assert table["fit_windows"] == 256  # the default
    assert not {"config_file", "print_config"} & set(table)
    again = _printed(
        capsys, "analyze", "rotation", "--config", _write(tmp_path / "b.toml", printed)
    )
    assert again == printed
    # A key of another analysis is named, with the file, in one line.
    file = _write(tmp_path / "c.toml", "threshold = 0.9\n")
    with pytest.raises(SystemExit):
        main(["analyze", "rotation", "--config", file, "--print-config"])
    assert capsys.readouterr().err.splitlines() == [
        f"sparse-tf analyze: error: {file}: threshold: unknown key"
    ]


def test_eval_and_perturb_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = _write(tmp_path / "e.toml", 'model = "runs/x/final"\nn = 40\nsplit = "val"\n')
    table = tomllib.loads(_printed(capsys, "eval", "--config", file, "--n", "50"))
    assert (table["model"], table["n"], table["split"], table["val_windows"]) == (
        "runs/x/final",
        50,
        "val",
        256,
    )
    file = _write(tmp_path / "p.toml", 'model = "b/final"\nmode = "scale"\nvalue = 2.0\n')
    table = tomllib.loads(_printed(capsys, "perturb", "--config", file, "--k", "8"))
    want = ("scale", 2.0, 8, "L1.attn_in")
    assert (table["mode"], table["value"], table["k"], table["site"]) == want
    # The options' own checks hold for the file's values too, in one line.
    file = _write(tmp_path / "bad.toml", 'model = "b/final"\nchannels = "1,x"\n')
    with pytest.raises(SystemExit):
        main(["perturb", "--config", file, "--print-config"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "--channels '1,x'" in err[0]


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(out) if "train/loss" in r]


def test_the_run_folders_config_toml_trains_the_same_run(corpus: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    quiet = ["--wandb", "disabled", "--progress", "none", "--log-every", "1", "--eval-every", "3"]
    main(["train", "--out", str(first), "--device", "cpu", *quiet, *tiny_train_flags(corpus, 6)])
    saved = first / "config.toml"
    assert saved.read_text().startswith("# The config of the run in this folder:")
    assert "resume" not in tomllib.loads(saved.read_text())
    main(["train", "--config", str(saved), "--out", str(second)])
    runs = [json.loads((out / "run.json").read_text()) for out in (first, second)]
    assert runs[0]["config"] == runs[1]["config"]
    options = [{k: v for k, v in run["options"].items() if k != "out"} for run in runs]
    assert options[0] == options[1]
    assert len(_losses(first)) == 6
    assert _losses(first) == _losses(second)
    # What config.toml holds is exactly what run.json records.
    _, config = parse_train(["--config", str(second / "config.toml")], bridged=False)
    assert config.to_dict() == runs[0]["config"]


def test_print_config_of_a_new_run_does_not_touch_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    printed = _printed(capsys, "train", "--out", str(out), "--max-steps", "3")
    assert tomllib.loads(printed)["max_steps"] == 3
    assert not out.exists()


def test_overwrite_removes_config_toml_with_the_run() -> None:
    assert is_run_output(RUN_TOML_FILE)
