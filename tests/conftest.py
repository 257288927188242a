"""Shared test setup: seeding, the Triton interpreter switch, and GPU-test skipping."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before any module
# defining kernels is imported. Without a GPU, kernels can only run under the interpreter
# (numpy-simulated, one program at a time: keep shapes small). `import torch` does not import
# triton, so asking torch about CUDA first is safe.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenizers and token shards of the test corpora go to a per-session folder, never to
    the user's cache; subprocesses inherit it through the environment."""
    os.environ["SPARSE_TF_CACHE"] = str(tmp_path_factory.mktemp("sparse_tf_cache"))
    os.environ["WANDB_SILENT"] = "true"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few stdlib packages as a directory corpus (tests may shadow it with their own)."""
    from tests.helpers import sample_corpus  # sparse_tf only after TRITON_INTERPRET is set

    return sample_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model (a few seconds) whose tokenizer expresses every task."""
    from sparse_tf.training import train
    from tests.helpers import quiet_options, task_train_config

    out = tmp_path_factory.mktemp("runs") / "tasks"
    return train(task_train_config(corpus), quiet_options(out)).final


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds the legacy global RNG that libraries still use
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
