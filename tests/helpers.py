"""Small builders shared by the tests."""

from __future__ import annotations

import io
import shutil
import sysconfig
from pathlib import Path

import torch

from sparse_tf import GPT, GPTConfig, SparsityConfig
from sparse_tf.data import DataConfig
from sparse_tf.training import RunOptions, TrainConfig


def tiny_config(**overrides: object) -> GPTConfig:
    """A 2-layer, d_model 64 model: 4 heads of 16, d_mlp 256, AbsTopK k = 16 / 64."""
    fields: dict[str, object] = {"vocab_size": 96, "n_ctx": 24, "n_layer": 2, "d_model": 64}
    fields.update(overrides)
    return GPTConfig(**fields)  # type: ignore[arg-type]


def tiny_model(**overrides: object) -> GPT:
    return GPT(tiny_config(**overrides))


def tokens(cfg: GPTConfig, batch: int = 3, seq: int | None = None) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq or cfg.n_ctx))


STDLIB_SAMPLE = ("json", "email", "html")
"""Standard-library packages copied into test corpora: real Python, a few hundred KB."""


def sample_corpus(folder: Path, packages: tuple[str, ...] = STDLIB_SAMPLE) -> Path:
    """A small directory corpus of real Python files (copied from this interpreter's stdlib)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for package in packages:
        for f in sorted((root / package).glob("*.py")):
            dest = folder / package / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return folder


def tiny_train_config(source: Path | str, **overrides: object) -> TrainConfig:
    """A run that takes about a second: 1 layer, d_model 32, ctx 32, BPE 320, 12 steps of 4.

    320 tokens leave no room for the 84 task tokens the default BPE reserves, so the
    reservation is off; `task_train_config` is the small run that keeps it."""
    fields: dict[str, object] = {
        "model": GPTConfig(vocab_size=320, n_ctx=32, n_layer=1, d_model=32),
        "sparsity": SparsityConfig(l0=1 / 8),
        "data": DataConfig(source=str(source), val_frac=0.1, task_tokens=False),
        "max_steps": 12,
        "batch_size": 4,
    }
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


def tiny_train_flags(source: Path | str, steps: int) -> list[str]:
    """`tiny_train_config(source, max_steps=steps)` as `sparse-tf train` flags."""
    return [
        "--max-steps", str(steps), "--batch-size", "4", "--model.vocab-size", "320",
        "--model.n-ctx", "32", "--model.n-layer", "1", "--model.d-model", "32",
        "--sparsity.l0", "0.125", "--data.source", str(source), "--data.val-frac", "0.1",
        "--data.no-task-tokens",
    ]  # fmt: skip


def quiet_options(out: Path, **overrides: object) -> RunOptions:
    """Run options for tests: no wandb, no progress output, frequent logs and checkpoints."""
    fields: dict[str, object] = {
        "out": str(out),
        "wandb": "disabled",
        "progress": "none",
        "log_every": 1,
        "eval_every": 4,
        "ckpt_every": 4,
        "keep_last": 10,
    }
    fields.update(overrides)
    return RunOptions(**fields)  # type: ignore[arg-type]


def task_train_config(source: Path | str, **overrides: object) -> TrainConfig:
    """A few-second run whose tokenizer expresses all 20 tasks: BPE 512 with the task tokens
    reserved, ctx 96 (the longest task prompt is under 90 tokens)."""
    fields: dict[str, object] = {
        "model": GPTConfig(vocab_size=512, n_ctx=96, n_layer=1, d_model=32),
        "data": DataConfig(source=str(source), val_frac=0.1),
    }
    fields.update(overrides)
    return tiny_train_config(source, **fields)


def assert_plot_drawn(png: bytes) -> None:
    """`png` is a real plot with data on it: axes and text are black and grey, the data lines
    coloured, so a plot with nothing drawn has (next to) no coloured pixel (as the benchmarks'
    tests check theirs with it)."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    assert width > 200
    assert height > 200
    pixels = np.asarray(image).astype(int)
    coloured = int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())
    assert coloured > 0.002 * width * height, "no data drawn in the plot"


def run_prune(argv: list[str]) -> int:
    """`main(["prune", ...])` on the tiny test models, which learn no task well enough for the
    default target: their circuits miss it, so the command exits with status 3 after writing
    its files. Returns the status (0 or 3); any other exit is raised."""
    from sparse_tf.cli import main
    from sparse_tf.cli.commands import TARGET_MISSED_STATUS

    try:
        main(argv)
    except SystemExit as e:
        if e.code != TARGET_MISSED_STATUS:
            raise
        return TARGET_MISSED_STATUS
    return 0
