"""Model folders on the Hugging Face Hub: `GPT.from_pretrained` and `GPT.push_to_hub`.

A Hub repository of a sparse_tf model is an exported model folder as it is (`export_model`:
model.safetensors, model.sparse.safetensors, config.json with `model_type: sparse_tf`,
tokenizer.json, README.md, the model card, and manifest.json), so there is one format: what is
downloaded is read by `load_model`, and what is uploaded is written by `export_model` (or is a
run's `final/` folder, `push_folder`). Downloads go through `huggingface_hub.snapshot_download`
into the Hub cache (`HF_HUB_CACHE`); with `HF_HUB_OFFLINE=1` or `local_files_only=True` a repo id
is resolved from that cache alone.

This module registers itself with `sparse_tf.model` when imported (the model layer cannot
import the checkpoint code it calls); `import sparse_tf` imports it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)
from tokenizers import Tokenizer

from sparse_tf.checkpoint import CheckpointError, export_model, load_model, verify
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import CONFIG_FILE, MANIFEST_FILE, MODEL_CARD_FILE
from sparse_tf.model import GPT, register_hub


class HubError(SparseTFError):
    """A repository that cannot be found, downloaded or uploaded."""


def model_folder(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder of a model: `repo_id_or_dir` itself if it is a folder, else the Hub
    repository's snapshot in the cache (downloaded unless offline)."""
    local = Path(repo_id_or_dir)
    if local.is_dir():
        return local
    repo_id = str(repo_id_or_dir)
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                library_name="sparse_tf",
            )
        )
    except HFValidationError:
        raise HubError(f"{repo_id}: neither a folder nor a Hub repo id (owner/name)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise HubError(
            f"{repo_id}: not in the Hub cache{f' at {cache_dir}' if cache_dir else ''}, and "
            "downloads are off (HF_HUB_OFFLINE=1 or local_files_only)"
        ) from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{repo_id}: {first}") from None


def from_pretrained(
    repo_id_or_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    device: str | torch.device = "cpu",
) -> GPT:
    """`load_model` of `model_folder(...)` (`GPT.from_pretrained`)."""
    folder = model_folder(
        repo_id_or_dir,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
    )
    return load_model(folder, device)


def prepare_upload(
    model: GPT,
    folder: Path,
    *,
    tokenizer: Tokenizer | None = None,
    config: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
) -> Path:
    """Write the folder `push_to_hub` uploads (it must not exist): `export_model`'s."""
    export_model(folder, model, tokenizer, dict(config) if config is not None else None,
                 results=results)  # fmt: skip
    return folder


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload a sparse_tf model",
) -> str:
    """Upload a model folder (a run's `final/`, or `prepare_upload`'s) to the Hub repository
    `repo_id`, created if missing; returns the commit's URL. The folder is first checked
    against its manifest, so a damaged folder is never published."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / MANIFEST_FILE).is_file():
        raise HubError(f"{folder}: not an exported model folder (needs config.json and "
                       "manifest.json: sparse_tf.export_model writes both)")  # fmt: skip
    try:
        verify(folder, present_only=True)
    except CheckpointError as e:
        raise HubError(str(e)) from None
    if not (folder / MODEL_CARD_FILE).is_file():
        print(f"sparse_tf: {folder}: no {MODEL_CARD_FILE} (exported before model cards); the "
              "repository gets no model card")  # fmt: skip
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=[".*"],  # lock files and other hidden leftovers
        )
    except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{repo_id}: upload failed ({first})") from None
    return str(commit.commit_url)  # type: ignore[union-attr]  # not run_as_future


def push_to_hub(
    model: GPT,
    repo_id: str,
    *,
    tokenizer: Tokenizer | None = None,
    config: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload a sparse_tf model",
) -> str:
    """`prepare_upload` into a temporary folder, then `push_folder` (`GPT.push_to_hub`)."""
    with tempfile.TemporaryDirectory(prefix="sparse_tf-upload-") as tmp:
        folder = prepare_upload(
            model, Path(tmp) / "model", tokenizer=tokenizer, config=config, results=results
        )
        return push_folder(
            folder,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
        )


class _Hub:
    """This module's functions, as `sparse_tf.model.Hub`."""

    from_pretrained = staticmethod(from_pretrained)
    push_to_hub = staticmethod(push_to_hub)


register_hub(_Hub())
