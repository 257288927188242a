"""Multi-process training on CPU ranks (gloo, torchrun): the sharded projection keeps exactly
what one process keeps; DDP and FSDP2 runs train the same model as one process; checkpoints
resume at any number of ranks in either mode; a dead rank ends the run."""

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
from sparse_tf.kernels.rule import topk_mask
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
            protected = topk_mask(w.abs(), MIN_PER_NEURON)
        elif dim == COLS:
            protected = topk_mask(w.abs().t(), MIN_PER_NEURON).t()
        masks += kernels.projection_masks([w], [protected], [k])
    return masks


def split_rows(n: int, world: int, rank: int) -> slice:
    """Uneven consecutive blocks, the last rank possibly empty (as FSDP's padded shards)."""
    per = -(-n // world)
    return slice(min(rank * per, n), min((rank + 1) * per, n))


def _worker(rank: int, world: int, init: str, seed: int, out: str, kernel: bool) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from sparse_tf.parallel import sharded_projection_masks
    from sparse_tf.parallel.projection import sharded_protection

    mats = matrices(seed)
    parts = [split_rows(w.shape[0], world, rank) for w, _, _ in mats]
    shards = [w[part].contiguous() for (w, _, _), part in zip(mats, parts, strict=True)]
    dims, ks = [d for _, d, _ in mats], [k for _, _, k in mats]
    if kernel:  # the radix-select kernels (interpreted), histograms summed over the ranks
        from sparse_tf.kernels import projection

        row0 = [part.start for part in parts]
        protected = sharded_protection(shards, dims, MIN_PER_NEURON, row0)
        # Chunks of 64 keys: several per matrix, so ties are ranked across chunks and ranks.
        masks = projection.topk_masks(shards, protected, ks, chunk=64, group=dist.group.WORLD)
    else:
        masks = sharded_projection_masks(shards, dims, ks, MIN_PER_NEURON)
    np.savez(Path(out) / f"rank{rank}.npz", *[m.numpy() for m in masks])
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo workers can abort in interpreter teardown; nothing is left to do


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("world", "seed", "kernel"), [(2, 0, False), (3, 1, False), (3, 0, True)])
def test_sharded_projection_keeps_the_single_process_set(
    world: int, seed: int, kernel: bool, tmp_path: Path
) -> None:
    """Torch implementation and the Triton kernels (interpreted here) with collectives."""
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(
        _worker, args=(world, init, seed, str(tmp_path), kernel), nprocs=world,
        start_method="spawn",
    )  # fmt: skip
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


def kept_sets(run: Path) -> dict[str, torch.Tensor]:
    return {name: w != 0 for name, w in final_weights(run).items()}


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_fsdp_matches_one_process(corpus: Path, tmp_path: Path) -> None:
    """FSDP2 on 3 ranks (every tensor sharded by uneven row blocks, projection on the shards,
    validation split over the ranks with padding, sharded checkpoints) trains the same model
    as one process: the same weights within the DDP test's tolerance, the same kept sets
    exactly, the same training and validation losses."""
    from sparse_tf.checkpoint import SHARDS_DIR, verify
    from sparse_tf.training import train
    from tests.helpers import quiet_options, tiny_train_config

    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    train(
        tiny_train_config(corpus, max_steps=6, batch_size=6),
        quiet_options(single, ckpt_every=3, eval_every=2, eval_windows=10),
    )
    # 10 validation windows on 3 ranks: 4, 4 and 2 real ones (+ 2 uncounted) each.
    flags = ("--batch-size", "6", "--dist", "fsdp", "--eval-every", "2", "--eval-windows", "10")
    run = torchrun(corpus, fsdp, 3, *flags)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 3 CPU processes (FSDP)" in run.stderr + run.stdout
    assert_same_model(single, fsdp)
    assert kept_sets(fsdp).keys() == kept_sets(single).keys()
    for name, kept in kept_sets(fsdp).items():
        assert torch.equal(kept, kept_sets(single)[name]), name
    assert losses(fsdp) == pytest.approx(losses(single), rel=1e-5)
    val = [json.loads(line).get("val/loss") for line in (fsdp / "metrics.jsonl").open()]
    expected = [json.loads(line).get("val/loss") for line in (single / "metrics.jsonl").open()]
    assert [v for v in val if v] == pytest.approx([v for v in expected if v], rel=1e-5)
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(
        json.loads((single / "summary.json").read_text())["val_loss"], rel=1e-5
    )
    # A sharded checkpoint: one safetensors file per rank, all in the manifest.
    shards = sorted((fsdp / "step-6" / SHARDS_DIR).glob("*.safetensors"))
    assert len(shards) == 3
    manifest = json.loads((fsdp / "step-6" / "manifest.json").read_text())["files"]
    assert {f"{SHARDS_DIR}/{f.name}" for f in shards} <= set(manifest)
    verify(fsdp / "step-6")


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoints_resume_anywhere(corpus: Path, tmp_path: Path) -> None:
    """A 2-rank FSDP checkpoint resumes in one process, on 3 FSDP ranks (uneven shards) and on
    2 DDP ranks; a one-process checkpoint resumes under FSDP; every resumed run ends at the
    uninterrupted one's model. load_model reads a sharded checkpoint; a truncated shard file
    is named."""
    from sparse_tf.checkpoint import SHARDS_DIR, CheckpointError, load_model
    from sparse_tf.training import train
    from tests.helpers import quiet_options, tiny_train_config

    cfg = tiny_train_config(corpus, max_steps=6, batch_size=6)  # 6 splits over 2 and 3 ranks
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    train(cfg, quiet_options(single, ckpt_every=3, eval_every=0))
    batch = ("--batch-size", "6")
    assert torchrun(corpus, fsdp, 2, *batch, "--dist", "fsdp").returncode == 0

    for name, nproc, flags in [
        ("fsdp-then-1", 1, ()),
        ("fsdp-then-3", 3, ("--dist", "fsdp")),
        ("fsdp-then-ddp", 2, ("--dist", "ddp")),
    ]:
        rewind_to_step_3(fsdp, tmp_path / name)
        run = torchrun(corpus, tmp_path / name, nproc, *batch, *flags, "--resume")
        assert run.returncode == 0, f"{name}: {run.stderr[-3000:]}"
        assert_same_model(single, tmp_path / name)

    rewind_to_step_3(single, tmp_path / "1-then-fsdp")
    run = torchrun(corpus, tmp_path / "1-then-fsdp", 2, *batch, "--dist", "fsdp", "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_model(single, tmp_path / "1-then-fsdp")

    from safetensors.torch import load_file

    model = load_model(fsdp / "step-3")
    expected = load_file(single / "step-3" / "model.safetensors")
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, expected[name], rtol=1e-4, atol=1e-5, msg=name)
    shard = next((fsdp / "step-3" / SHARDS_DIR).glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(fsdp / "step-3")


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
@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_a_dead_rank_ends_the_run_and_its_checkpoint_resumes(
    dist: str, corpus: Path, tmp_path: Path
) -> None:
    import signal
    import time

    from sparse_tf.checkpoint import list_checkpoints, verify

    out = tmp_path / "run"
    extra = ["--ckpt-every", "10", "--log-every", "10", "--dist", dist]
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
    assert f"resume with: sparse-tf train --out {out} --resume (under torchrun" in stderr
    [(step, path)] = list_checkpoints(out)
    assert step % 5 == 0  # written at the agreed log step, not by the cadence
    verify(path)
