"""Model folders as Hugging Face Hub repositories (`sparse_tf.hub`), without the network: a
local folder, a repo id resolved from a Hub cache laid out as huggingface_hub lays it out (in
this process with local_files_only, and in a subprocess under HF_HUB_OFFLINE=1), the model
card every export writes, and the folder an upload would send."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from sparse_tf import GPT, HubError, load_model, load_tokenizer
from sparse_tf.checkpoint import export_model, verify, write_manifest
from sparse_tf.data.tokenizer import train_bpe
from sparse_tf.hub import model_folder, prepare_upload, push_folder
from tests.helpers import tiny_model, tokens

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def exported(tmp_path: Path) -> tuple[GPT, Path]:
    torch.manual_seed(0)
    model = tiny_model().eval()
    tok = train_bpe(["def f(x):\n    return x\n"] * 10, 270)
    export_model(tmp_path / "final", model, tok, None)
    return model, tmp_path / "final"


def hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """`folder` as huggingface_hub's cache holds a downloaded repository: refs/main names a
    commit, snapshots/<commit>/ holds its files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    return cache


def same_logits(a: GPT, b: GPT) -> bool:
    x = tokens(a.cfg, batch=2)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_from_pretrained_reads_a_local_folder(exported: tuple[GPT, Path]) -> None:
    model, folder = exported
    loaded = GPT.from_pretrained(folder)
    assert same_logits(loaded, model)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sparse_tf"


def test_a_repo_id_resolves_from_the_cache_offline(
    exported: tuple[GPT, Path], tmp_path: Path
) -> None:
    model, folder = exported
    cache = hub_cache(folder, tmp_path / "hub", "someone/tiny-sparse")
    loaded = GPT.from_pretrained("someone/tiny-sparse", cache_dir=cache, local_files_only=True)
    assert same_logits(loaded, model)
    snapshot = model_folder("someone/tiny-sparse", cache_dir=cache, local_files_only=True)
    assert load_tokenizer(snapshot).encode("def f").ids
    with pytest.raises(HubError, match="someone/other: not in the Hub cache"):
        GPT.from_pretrained("someone/other", cache_dir=cache, local_files_only=True)
    with pytest.raises(HubError, match="neither a folder nor a Hub repo id"):
        GPT.from_pretrained(str(tmp_path / "no" / "such" / "folder"), local_files_only=True)


def test_hf_hub_offline_in_a_fresh_process(exported: tuple[GPT, Path], tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE as a user sets them: no network, the cache's copy."""
    model, folder = exported
    cache = hub_cache(folder, tmp_path / "hub", "someone/tiny-sparse")
    torch.save(tokens(model.cfg, batch=2), tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(torch.load(tmp_path / "x.pt")), tmp_path / "expected.pt")
    script = (
        "import sys, torch; from sparse_tf import GPT, HubError\n"
        "m = GPT.from_pretrained('someone/tiny-sparse')\n"
        "x = torch.load(sys.argv[1]); e = torch.load(sys.argv[2])\n"
        "assert torch.equal(m(x), e)\n"
        "try:\n"
        "    GPT.from_pretrained('someone/elsewhere')\n"
        "except HubError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "expected.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "someone/elsewhere: not in the Hub cache" in proc.stdout


def test_folders_exported_before_model_cards_still_load(exported: tuple[GPT, Path]) -> None:
    model, folder = exported
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "README.md").unlink()
    (folder / "manifest.json").unlink()
    write_manifest(folder)
    assert same_logits(GPT.from_pretrained(folder), model)
    assert same_logits(load_model(folder), model)


def test_the_training_export_has_a_model_card(trained: Path) -> None:
    card = ModelCard.load(trained / "README.md")  # the Hub's own parser of the YAML header
    assert card.data.library_name == "sparse_tf"
    assert "weight-sparse" in card.data.tags
    summary = json.loads((trained.parent / "summary.json").read_text())
    config = json.loads((trained / "config.json").read_text())
    text = card.text
    assert f"{summary['val_loss']:.4f}" in text
    assert "1/8 of each attention and MLP matrix" in text  # the run's L0
    assert f"{config['train']['max_steps']:,} x 4 sequences of 96 tokens" in text
    assert config["train"]["data"]["source"] in text
    assert "keeps 1/4 of the entries per token at attn_in, attn_q" in text
    assert "GPT.from_pretrained" in text
    verify(trained)  # the card is in the manifest


def test_the_upload_folder_and_task_scores(
    exported: tuple[GPT, Path], tmp_path: Path, trained: Path
) -> None:
    """What push_to_hub would upload: export_model's folder, the card with the given scores;
    push_folder refuses a damaged folder before any network call."""
    model, _ = exported
    scores = {"single_double_quote": {"loss": 0.1234, "accuracy": 0.975, "margin": 3.0}}
    config = json.loads((trained / "config.json").read_text())["train"]
    upload = prepare_upload(
        model, tmp_path / "up", config=config, results={"val_loss": 2.5, "tasks": scores}
    )
    verify(upload)
    card = (upload / "README.md").read_text()
    assert "| single_double_quote | 0.123 | 0.975 |" in card
    assert "2.5000" in card
    assert same_logits(load_model(upload), model)
    (upload / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(HubError, match=r"model\.safetensors"):
        push_folder(upload, "someone/tiny-sparse")
    with pytest.raises(HubError, match="not an exported model folder"):
        push_folder(tmp_path, "someone/tiny-sparse")
