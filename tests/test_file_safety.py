"""A user's files are never lost: --overwrite removes only what sparse_tf wrote, folders that
sparse_tf did not write are refused, and one folder has one writer at a time (a lock held for
the job's life, released however the job ends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse_tf.checkpoint import list_checkpoints
from sparse_tf.extras import installed
from sparse_tf.filenames import (
    CIRCUIT_FILE,
    HTML_FILE,
    LOSS_VS_K_FILE,
    MEANS_FILE,
    PLOTS_DIR,
    SCORES_FILE,
)
from sparse_tf.io import LOCK_FILE, FolderInUseError, FolderLock, user_entries
from sparse_tf.training import TrainingError, train
from tests.helpers import quiet_options, run_prune, tiny_train_config, tiny_train_flags

ROOT = Path(__file__).resolve().parents[1]


def user_files(folder: Path) -> dict[str, str]:
    """What a user keeps in a run folder: notes, a pruning result in circuits/, a link."""
    (folder / "circuits").mkdir(parents=True, exist_ok=True)
    files = {
        "notes.md": "my notes",
        "circuits/circuit.json": '{"mine": true}',
        "circuits/notes.txt": "keep",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def test_train_overwrite_removes_the_run_and_keeps_the_users_files(
    corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = tiny_train_config(corpus, max_steps=4)
    train(cfg, quiet_options(out))
    mine = user_files(out)
    (out / "link").symlink_to(tmp_path / "elsewhere")  # a dangling link of the user's
    (out / PLOTS_DIR).mkdir()  # `sparse-tf plot`'s, of the run being replaced
    (out / PLOTS_DIR / "loss.png").write_bytes(b"the old curves")
    train(cfg, quiet_options(out, overwrite=True))
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    assert (out / "link").is_symlink()
    assert not (out / PLOTS_DIR).exists()
    assert [s for s, _ in list_checkpoints(out)] == [4]
    assert (out / "final" / "model.safetensors").is_file()


def test_foreign_run_json_is_refused_and_left_alone(corpus: Path, tmp_path: Path) -> None:
    """Another tool's run.json does not make a folder a sparse_tf run, with --overwrite too."""
    (tmp_path / "run.json").write_text('{"name": "another tool"}')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('hi')")
    for overwrite in (False, True):
        with pytest.raises(TrainingError, match=r"run\.json was not written by sparse_tf"):
            train(tiny_train_config(corpus), quiet_options(tmp_path, overwrite=overwrite))
    assert (tmp_path / "src" / "main.py").read_text() == "print('hi')"
    assert json.loads((tmp_path / "run.json").read_text()) == {"name": "another tool"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "src"]  # not even a lock


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_out_that_is_not_a_real_folder_is_refused(kind: str, corpus: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "out"
    if kind == "symlink":
        out.symlink_to(target)
    else:
        out.write_text("a file")
    with pytest.raises(TrainingError, match=r"is a symlink|is not a folder"):
        train(tiny_train_config(corpus), quiet_options(out, overwrite=True))
    assert out.is_symlink() if kind == "symlink" else out.read_text() == "a file"
    assert not any(target.iterdir())


def test_a_locked_folder_is_refused_with_the_holder_named(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    busy = pytest.raises(FolderInUseError, match=rf"{out}: in use by a training run \(pid ")
    with FolderLock(out, "a training run"), busy:
        train(tiny_train_config(corpus), quiet_options(out))
    # Released: the folder can be used, and the lock file records the last holder.
    train(tiny_train_config(corpus, max_steps=2), quiet_options(out))
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_left_by_a_dead_process_is_not_in_force(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"what": "a training run", "pid": 2**22}))
    train(tiny_train_config(corpus, max_steps=2), quiet_options(out))
    assert (out / "final" / "model.safetensors").is_file()


def _train_process(corpus: Path, out: Path, steps: int, *extra: str) -> subprocess.Popen[str]:
    flags = ["train", "--out", str(out), "--wandb", "disabled", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "sparse_tf.cli", *flags, *tiny_train_flags(corpus, steps), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait_for_lock(out: Path, pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((out / LOCK_FILE).read_text())["pid"] == pid:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never locked {out}")


def test_two_trainings_on_one_folder_one_refuses(corpus: Path, tmp_path: Path) -> None:
    """The second of two simultaneous runs (a new one, a resume, an overwrite) on one --out
    refuses in one line naming the first; once the first is killed (-9) the lock is free."""
    out = tmp_path / "run"
    first = _train_process(corpus, out, 100_000)  # killed long before the end
    try:
        _wait_for_lock(out, first.pid)
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = _train_process(corpus, out, 100_000, *extra)
            _, err = second.communicate(timeout=120)
            assert second.returncode == 1, err
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert f"in use by a training run (pid {first.pid}" in lines[0]
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.communicate()
    with FolderLock(out, "a test"):  # the OS dropped the dead process's lock
        pass


# -- sparse-tf prune ---------------------------------------------------------------------------

SHORT_PRUNE = [
    "--task", "single_double_quote", "--steps", "12", "--batch-pairs", "8", "--n-train", "32",
    "--n-val", "16", "--n-test", "16", "--curve-points", "6", "--mean-windows", "16",
]  # fmt: skip
"""A pruning run of a second or two on the tiny trained model."""


def prune(trained: Path, out: Path, *extra: str) -> None:
    run_prune(["prune", "--model", str(trained), "--out", str(out), *SHORT_PRUNE, *extra])


def test_prune_overwrite_replaces_the_result_and_keeps_the_users_files(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "circuits"
    prune(trained, out)
    first = (out / CIRCUIT_FILE).read_text()
    mine = user_files(out / "mine")  # a folder of the user's inside the result folder
    (out / "notes.md").write_text("why this circuit")
    with pytest.raises(SystemExit):
        prune(trained, out)  # without --overwrite
    assert (out / CIRCUIT_FILE).read_text() == first
    prune(trained, out, "--overwrite", "--seed", "1")
    assert (out / CIRCUIT_FILE).read_text() != first  # replaced
    assert (out / "notes.md").read_text() == "why this circuit"
    for name, text in mine.items():
        assert (out / "mine" / name).read_text() == text
    plot = [LOSS_VS_K_FILE] if installed("matplotlib") else []  # the [plot] extra's
    assert user_entries(out) == sorted(
        ["mine", "notes.md", CIRCUIT_FILE, HTML_FILE, MEANS_FILE, SCORES_FILE, *plot]
    )


def test_prune_refuses_a_foreign_circuit_json(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / CIRCUIT_FILE).write_text('{"gates": [1, 2]}')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.c").write_text("int main;")
    with pytest.raises(SystemExit):
        prune(trained, tmp_path, "--overwrite")
    err = capsys.readouterr().err.strip()
    assert "circuit.json was not written by sparse_tf" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIRCUIT_FILE, "src"]  # no lock file
    assert (tmp_path / "src" / "lib.c").read_text() == "int main;"


def test_prune_into_a_locked_folder_names_the_holder(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FolderLock(tmp_path, "a pruning run"), pytest.raises(SystemExit):
        prune(trained, tmp_path)
    assert f"in use by a pruning run (pid {os.getpid()}" in capsys.readouterr().err
