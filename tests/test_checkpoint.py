"""Atomic writes, checkpoints (exact restore, verification), export and loading."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from sparse_tf import GPT, OptimConfig, SparseOptimizer, SparsityConfig, lm_loss
from sparse_tf.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    SPARSE_MODEL_FILE,
    CheckpointError,
    export_model,
    list_checkpoints,
    load_checkpoint,
    load_model,
    save_checkpoint,
    verify,
)
from sparse_tf.data import train_bpe
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.io import atomic_dir, atomic_write_text, remove_leftovers
from tests.helpers import tiny_config, tokens

SPARSITY = SparsityConfig(l0=1 / 8, anneal_end=0.2)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["def f(x):\n    return x\n"] * 10, 270)


def _setup(steps: int = 10) -> tuple[GPT, SparseOptimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(tiny_config())
    opt = SparseOptimizer(model, OptimConfig(), SPARSITY, total_steps=steps)
    return model, opt, tokens(model.cfg, batch=4)


def _steps(model: GPT, opt: SparseOptimizer, x: torch.Tensor, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        loss = lm_loss(model(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _save(out: Path, model: GPT, opt: SparseOptimizer, tokenizer: object, keep_last: int) -> Path:
    return save_checkpoint(
        out,
        model=model,
        optimizer=opt,
        tokenizer=tokenizer,  # type: ignore[arg-type]
        config={"note": "test"},
        state={"data_position": 12},
        keep_last=keep_last,
    )


def test_checkpoint_restores_training_exactly(tmp_path: Path, tokenizer: object) -> None:
    model, opt, x = _setup()
    _steps(model, opt, x, 3)
    _save(tmp_path, model, opt, tokenizer, keep_last=2)
    expected = _steps(model, opt, x, 4)

    fresh, fresh_opt, _ = _setup()
    state = load_checkpoint(tmp_path / "step-3", fresh, fresh_opt)
    assert state["data_position"] == 12
    assert fresh_opt.step_count == 3
    assert _steps(fresh, fresh_opt, x, 4) == expected  # bit-identical continuation
    for (n, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert load_tokenizer(tmp_path / "step-3").to_str() == tokenizer.to_str()  # type: ignore[attr-defined]


def test_keep_last_deletes_only_older_complete_checkpoints(
    tmp_path: Path, tokenizer: object
) -> None:
    model, opt, x = _setup()
    for _ in range(4):
        _steps(model, opt, x, 1)
        _save(tmp_path, model, opt, tokenizer, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3", "step-4"]  # no temp left


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_is_refused_naming_the_file(
    tmp_path: Path, tokenizer: object, damage: str
) -> None:
    model, opt, x = _setup()
    _steps(model, opt, x, 1)
    path = _save(tmp_path, model, opt, tokenizer, keep_last=1)
    f = path / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(data[: len(data) - 100])
        match = "truncated"
    elif damage == "flip":
        data[-5] ^= 0xFF
        f.write_bytes(data)
        match = "checksum mismatch"
    else:
        f.unlink()
        match = "missing"
    with pytest.raises(CheckpointError, match=match) as err:
        verify(path)
    assert "optimizer.safetensors" in str(err.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, *_setup()[:2])


def test_export_loads_bit_identical_from_dense_and_compressed(
    tmp_path: Path, tokenizer: object
) -> None:
    model, opt, x = _setup(steps=4)
    _steps(model, opt, x, 4)  # ends at the target L0
    sizes = export_model(tmp_path / "final", model, tokenizer)  # type: ignore[arg-type]
    assert sizes[SPARSE_MODEL_FILE] < sizes[MODEL_FILE]
    dense = load_model(tmp_path / "final")
    (tmp_path / "final" / MODEL_FILE).unlink()
    compressed = load_model(tmp_path / "final")
    for name, p in model.state_dict().items():
        assert torch.equal(dense.state_dict()[name], p), name
        assert torch.equal(compressed.state_dict()[name], p), name
    assert not compressed.training
    assert torch.equal(compressed(x), model.eval()(x))


def test_compressed_export_of_wide_matrices_uses_int32_columns(tmp_path: Path) -> None:
    # 40,000 columns do not fit int16 column indices.
    model = GPT(tiny_config(vocab_size=40_000, d_model=16, n_layer=1, bigram=False))
    with torch.no_grad():
        model.unembed.weight.zero_()
        model.unembed.weight[3, 5] = 1.5
        model.embed.weight.zero_()
        model.embed.weight[39_999, 15] = -2.0
    tok = train_bpe(["abc"] * 3, 260)
    export_model(tmp_path, model, tok)
    (tmp_path / MODEL_FILE).unlink()
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    assert torch.equal(loaded.unembed.weight, model.unembed.weight)


def test_load_model_errors_name_the_file(tmp_path: Path, tokenizer: object) -> None:
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(tmp_path / "nope")
    model = GPT(tiny_config())
    export_model(tmp_path / "m", model, tokenizer)  # type: ignore[arg-type]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["d_modle"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: \d+ bytes, expected \d+"):
        load_model(tmp_path / "m")  # the export's manifest sees the edit first
    (tmp_path / "m" / MANIFEST_FILE).unlink()  # a folder without one: each file is checked
    with pytest.raises(
        CheckpointError, match=r"config\.json: unknown GPTConfig field\(s\) \['d_modle'\]"
    ):
        load_model(tmp_path / "m")
    del config["model"]["d_modle"]
    config["model"]["d_model"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"needs embed\.weight of shape \[\d+, 32\]"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m")
    config["model"]["d_model"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable"):
        load_model(tmp_path / "m")


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "final"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("good")

    def crash_while_writing() -> None:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    assert (target / "a.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    (tmp_path / ".final.abc123.tmp").mkdir()  # what SIGKILL during a write leaves
    (tmp_path / ".final.old-4242").mkdir()
    (tmp_path / ".notes").write_text("a user's hidden file")
    assert remove_leftovers(tmp_path) == [".final.abc123.tmp", ".final.old-4242"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes", "final"]
    atomic_write_text(target / "a.txt", "new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    # mkstemp/mkdtemp create 0600/0700 entries; shared artifacts must follow the umask instead.
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "final") as tmp:
            (tmp / "b.txt").write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "final").stat().st_mode) == 0o755
