"""Never load a bad model silently: exported folders are checked against their manifest,
pickled weights are never loaded, damaged logs do not stop a resume."""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from sparse_tf import export_model, load_model
from sparse_tf.bridges import BridgeError, load_gpt2
from sparse_tf.checkpoint import MANIFEST_FILE, MODEL_FILE, SPARSE_MODEL_FILE, CheckpointError
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.gpt2 import DenseGPT2, GPT2Config
from sparse_tf.log import METRICS_FILE, read_metrics
from sparse_tf.training import train
from tests.helpers import quiet_options, tiny_train_config


def flip_a_bit(file: Path, at: float = 0.6) -> None:
    data = bytearray(file.read_bytes())
    data[int(len(data) * at)] ^= 0x40  # deep in the tensor data, past the header
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [MODEL_FILE, SPARSE_MODEL_FILE])
def test_a_flipped_bit_in_an_export_is_an_error(name: str, trained: Path, tmp_path: Path) -> None:
    final = tmp_path / "final"
    shutil.copytree(trained, final)
    assert MANIFEST_FILE in {p.name for p in final.iterdir()}
    flip_a_bit(final / name)
    with pytest.raises(CheckpointError, match=rf"{name}: checksum mismatch"):
        load_model(final)
    if name == MODEL_FILE:  # what the check is there for: the bad weights load without it
        bad = load_model(final, check_files=False).state_dict()
        good = load_model(trained).state_dict()
        assert any(not torch.equal(bad[k], good[k]) for k in good)


class _Planted:
    """A pickle that touches a file when unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.sentinel),))


def hf_folder(tmp_path: Path) -> Path:
    """A tiny GPT-2 exported by this library (safetensors, manifest, tokenizer)."""
    cfg = GPT2Config(vocab_size=64, n_ctx=16, n_layer=1, d_model=32)
    folder = tmp_path / "gpt2"
    export_model(folder, DenseGPT2(cfg), _tokenizer(), None)
    return folder


def _tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.BPE())


def test_pickled_dense_weights_are_never_loaded(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    sentinel = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(sentinel)))
    load_gpt2(folder)  # safetensors beside it: those are read
    assert not sentinel.exists()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(BridgeError, match=r"no \.safetensors weights \(only pytorch_model\.bin"):
        load_gpt2(folder)
    assert not sentinel.exists()


def test_a_flipped_bit_in_a_dense_export_is_an_error(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    flip_a_bit(folder / "model.safetensors")
    with pytest.raises(BridgeError, match="checksum mismatch"):
        load_gpt2(folder)
    load_gpt2(folder, check_files=False)


def test_damaged_metrics_do_not_stop_a_resume(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbage line, a record without a step, binary bytes: skipped with a warning."""
    out = tmp_path / "run"
    cfg = tiny_train_config(corpus, max_steps=8)
    train(cfg, quiet_options(out, ckpt_every=4, eval_every=0))
    (out / "summary.json").unlink()
    for name in ("step-8", "final"):
        shutil.rmtree(out / name)
    clean = read_metrics(out)
    with open(out / METRICS_FILE, "ab") as f:
        f.write(b"not json\n" + b'{"loss": 1.0}\n' + bytes(range(11, 256)) + b"\n")
    assert read_metrics(out) == clean
    train(cfg, quiet_options(out, ckpt_every=4, eval_every=0, resume=True))
    assert "dropped 3 damaged line(s)" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == list(range(1, 9))
    assert load_tokenizer(out / "final").get_vocab_size() > 0


def test_a_config_claiming_a_huge_model_is_refused_before_building(
    trained: Path, tmp_path: Path
) -> None:
    """config.json says a million layers (the file holds one): refused from the weights file's
    header, at once."""
    folder = tmp_path / "final"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["n_layer"] = 10**6
    (folder / "config.json").write_text(json.dumps(config))
    (folder / MANIFEST_FILE).unlink()  # hand-edited: nothing vouches for the files
    start = time.perf_counter()
    with pytest.raises(
        CheckpointError, match=r"n_layer 1000000, but model\.safetensors holds 1 layers"
    ):
        load_model(folder)
    (folder / MODEL_FILE).unlink()  # the compressed file's header says the same
    with pytest.raises(CheckpointError, match=r"model\.sparse\.safetensors holds 1 layers"):
        load_model(folder)
    assert time.perf_counter() - start < 10


def test_a_dense_folder_missing_weights_is_not_filled_with_random_ones(tmp_path: Path) -> None:
    """transformers initialises tensors absent from the file at random; load_gpt2 refuses."""
    from safetensors.torch import load_file, save_file

    folder = hf_folder(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(BridgeError, match=r"the weights lack 1 GPT-2 tensor"):
        load_gpt2(folder)
