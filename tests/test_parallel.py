"""Multi-process pieces on CPU ranks (gloo): the sharded projection keeps exactly what one
process keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparse_tf import kernels
from sparse_tf.kernels import reference
from sparse_tf.sparsity import COLS, ROWS
from tests.helpers import tiny_train_flags

MIN_PER_NEURON = 4


def matrices(seed: int) -> list[tuple[torch.Tensor, int | None, int]]:
    """(weight, neuron_dim, kept count): ordinary weights, exact ties (small integers),
    zeros, an all-zero matrix, K at the protection size and at numel, few rows per rank."""
    g = torch.Generator().manual_seed(seed)
    ties = torch.randint(-3, 4, (12, 40), generator=g).float()
    sparse = torch.randn(30, 16, generator=g) * (torch.rand(30, 16, generator=g) < 0.3)
    out = [
        (torch.randn(24, 32, generator=g), ROWS, 100),
        (torch.randn(24, 32, generator=g), COLS, 150),
        (ties, ROWS, 12 * 4 + 7),
        (ties.clone(), COLS, 40 * 4 + 3),
        (sparse, COLS, 70),
        (torch.zeros(9, 10), ROWS, 50),
        (torch.randn(5, 64, generator=g), None, 17),
        (torch.randn(6, 7, generator=g), COLS, 42),  # K = numel
        (torch.randn(3, 50, generator=g), COLS, 50 * 3),  # protection is everything
    ]
    return out


def single_process(seed: int) -> list[torch.Tensor]:
    masks = []
    for w, dim, k in matrices(seed):
        protected = None
        if dim == ROWS:
            protected = reference.topk_mask(w.abs(), MIN_PER_NEURON)
        elif dim == COLS:
            protected = reference.topk_mask(w.abs().t(), MIN_PER_NEURON).t()
        masks += kernels.projection_masks([w], [protected], [k])
    return masks


def split_rows(n: int, world: int, rank: int) -> slice:
    """Uneven consecutive blocks, the last rank possibly empty (as FSDP's padded shards)."""
    per = -(-n // world)
    return slice(min(rank * per, n), min((rank + 1) * per, n))


def _worker(rank: int, world: int, init: str, seed: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from sparse_tf.parallel import sharded_projection_masks

    mats = matrices(seed)
    shards = [w[split_rows(w.shape[0], world, rank)] for w, _, _ in mats]
    masks = sharded_projection_masks(
        shards, [d for _, d, _ in mats], [k for _, _, k in mats], MIN_PER_NEURON
    )
    np.savez(Path(out) / f"rank{rank}.npz", *[m.numpy() for m in masks])
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo workers can abort in interpreter teardown; nothing is left to do


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_sharded_projection_keeps_the_single_process_set(
    world: int, seed: int, tmp_path: Path
) -> None:
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(
        _worker, args=(world, init, seed, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    parts = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for i, expected in enumerate(single_process(seed)):
        got = np.concatenate([p[f"arr_{i}"] for p in parts], axis=0)
        assert got.shape == tuple(expected.shape)
        assert np.array_equal(got, expected.numpy()), f"matrix {i}"
        assert got.sum() == matrices(seed)[i][2]


def torchrun(corpus: Path, out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    """`sparse-tf train` of `tiny_train_config(corpus, max_steps=6)` under torchrun (gloo);
    `extra` flags come last and win."""
    flags = [*tiny_train_flags(corpus, 6), "--out", str(out), "--log-every", "1",
             "--ckpt-every", "3"]  # fmt: skip
    return subprocess.run(
        torchrun_command(nproc, *flags, *extra), capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def torchrun_command(nproc: int, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(nproc), "-m", "sparse_tf.cli", "train", "--wandb", "disabled", "--progress", "none",
        "--eval-every", "0", "--keep-last", "5", *flags,
    ]  # fmt: skip


def start_torchrun(nproc: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        torchrun_command(nproc, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def assert_same_model(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:  # fp32 gradients summed in another order: a little slack
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=name)


def losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["train/loss"] for r in records if "train/loss" in r]


def rewind_to_step_3(run: Path, copy: Path) -> None:
    """A copy of a finished 6-step run as it was after its step-3 checkpoint."""
    shutil.copytree(run, copy)
    for name in ("step-6", "final"):
        shutil.rmtree(copy / name)
    (copy / "summary.json").unlink()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ddp_matches_one_process(corpus: Path, tmp_path: Path) -> None:
    """Two ranks (each half of the global batch, DDP averaging) train the same model as one
    process, log the same losses, and reject a batch they cannot split evenly."""
    from sparse_tf.training import train
    from tests.helpers import quiet_options, tiny_train_config

    single = tmp_path / "single"
    train(tiny_train_config(corpus, max_steps=6), quiet_options(single, ckpt_every=3, eval_every=0))
    run = torchrun(corpus, tmp_path / "ddp", 2)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = tmp_path / "ddp"
    # The flags describe the same config as tiny_train_config: checked, not assumed.
    config = json.loads((ddp / "run.json").read_text())["config"]
    assert config == json.loads((single / "run.json").read_text())["config"]
    assert_same_model(single, ddp)
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)  # rank 0 logs the global mean

    bad = torchrun(corpus, tmp_path / "odd", 2, "--batch-size", "3")
    assert bad.returncode != 0
    assert "batch_size=3 must be divisible by the 2 ranks" in bad.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_checkpoints_resume_at_another_number_of_ranks(corpus: Path, tmp_path: Path) -> None:
    """A 2-rank checkpoint resumes in one process, a 1-process checkpoint on 2 ranks; both end
    where the uninterrupted runs end (the data position is global: no sample is repeated or
    skipped)."""
    from sparse_tf.training import train
    from tests.helpers import quiet_options, tiny_train_config

    cfg = tiny_train_config(corpus, max_steps=6)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(cfg, quiet_options(single, ckpt_every=3, eval_every=0))
    assert torchrun(corpus, ddp, 2).returncode == 0

    rewind_to_step_3(ddp, tmp_path / "ddp-then-1")
    train(cfg, quiet_options(tmp_path / "ddp-then-1", ckpt_every=3, eval_every=0, resume=True))
    assert_same_model(ddp, tmp_path / "ddp-then-1")

    rewind_to_step_3(single, tmp_path / "1-then-ddp")
    run = torchrun(corpus, tmp_path / "1-then-ddp", 2, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_model(single, tmp_path / "1-then-ddp")


def _rank_pid(rank: int, parent: int) -> int | None:
    """The pid of the torchrun worker with LOCAL_RANK=`rank` below `parent` (Linux /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ppid = int(status.split("PPid:")[1].split()[0])
        if f"LOCAL_RANK={rank}".encode() in env and ppid == parent:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_dead_rank_ends_the_run_and_its_checkpoint_resumes(corpus: Path, tmp_path: Path) -> None:
    import signal
    import time

    from sparse_tf.checkpoint import list_checkpoints, verify

    out = tmp_path / "run"
    extra = ["--ckpt-every", "10", "--log-every", "10"]
    proc = start_torchrun(2, *tiny_train_flags(corpus, 300), "--out", str(out), *extra)
    deadline = time.monotonic() + 120
    while not list(out.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = _rank_pid(1, proc.pid)
    assert victim is not None, "no rank-1 worker found"
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - killed < 30  # bounded: torchrun ends the group
    assert "sparse-tf train: error: lost another rank" in stderr or "SIGKILL" in stderr
    checkpoints = list_checkpoints(out)
    assert checkpoints
    for _, path in checkpoints:
        verify(path)  # every checkpoint left behind is complete
    resumed = torchrun(corpus, out, 2, "--max-steps", "300", *extra, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_signal_to_one_rank_stops_all_after_the_same_step(corpus: Path, tmp_path: Path) -> None:
    """SIGTERM reaches rank 1 only: both ranks agree at the next log step, rank 0 writes that
    step's checkpoint, and the run exits saying how to resume (no rank is left waiting)."""
    import signal
    import time

    from sparse_tf.checkpoint import list_checkpoints, verify

    out = tmp_path / "run"
    flags = [*tiny_train_flags(corpus, 100_000), "--out", str(out), "--log-every", "5"]
    proc = start_torchrun(2, *flags, "--ckpt-every", "100000")
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").stat().st_size:
        assert proc.poll() is None, "training ended early"
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    victim = _rank_pid(1, proc.pid)
    assert victim is not None, "no rank-1 worker found"
    os.kill(victim, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "stopped by a signal to another rank" in stderr  # rank 0 did not get the signal
    assert "continue with --resume" in stderr
    [(step, path)] = list_checkpoints(out)
    assert step % 5 == 0  # written at the agreed log step, not by the cadence
    verify(path)
