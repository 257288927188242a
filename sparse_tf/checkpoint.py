"""Checkpoints, exports and loading: safetensors + JSON only, every folder written atomically.

    OUT/step-N/     a resumable training state after N optimizer steps:
        model.safetensors       parameters
        optimizer.safetensors   Adam moments and step counts, by parameter name
        rng.safetensors         torch CPU (and CUDA) generator states
        state.json              step, data position, schedule values, run id
        config.json             the model config and the full training config
        tokenizer.json          the tokenizer the data was encoded with
        manifest.json           size and sha256 of every file (written last)
    OUT/final/      the shareable model:
        model.safetensors, model.sparse.safetensors (compressed), config.json, tokenizer.json,
        README.md (the model card, `sparse_tf.model_card`), manifest.json (as a checkpoint's:
        checked by `load_model`). The same folder is a Hugging Face Hub model repository
        (`sparse_tf.hub`): config.json names its `model_type`.

A run whose model is sharded (FSDP, `sparse_tf.parallel.fsdp`) writes its step-N folders with
`torch.distributed.checkpoint` (DCP) instead of the model and optimizer files: `shards/` holds
one safetensors file per rank, written in parallel, with that rank's rows of every parameter
('model.{name}') and Adam state ('optimizer.{name}.exp_avg', ...) and their offsets in the
file's metadata; the other files are as above, from rank 0. Either kind of checkpoint resumes
at any number of ranks, sharded or not (DCP reshards on load), and loads with `load_model`.
With several machines, OUT must be on a file system they all see.

`load_model(DIR)` and `load_tokenizer(DIR)` read any of these folders. Nothing here unpickles:
a checkpoint handed over by someone else is data, never code. (DCP's default format pickles
its metadata; its safetensors format, used here, does not.)
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor
from torch.distributed.checkpoint import (
    CheckpointException,
    HuggingFaceStorageReader,
    HuggingFaceStorageWriter,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from sparse_tf import official
from sparse_tf._version import __version__
from sparse_tf.config import ConfigError
from sparse_tf.data.tokenizer import save_tokenizer
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import (
    CONFIG_FILE,
    HF_TRAIN_CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SHARDS_DIR,
    SPARSE_MODEL_FILE,
    STATE_FILE,
    STEP_DIR_PREFIX,
    step_dir_name,
)
from sparse_tf.gpt2 import DenseGPT2, GPT2Config
from sparse_tf.io import (
    atomic_dir,
    atomic_write_text,
    file_sha256,
    publish_dir,
    read_json,
    remove_dir,
    write_json,
)
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.model_card import model_card
from sparse_tf.optim import SparseOptimizer
from sparse_tf.parallel.fsdp import is_sharded
from sparse_tf.sparsity import count_nonzeros, mark_sparse
from sparse_tf.trainable import ModelConfig, SelfExporting, TrainableModel, model_config

_MODEL_KEY, _OPTIMIZER_KEY = "model.", "optimizer."  # name prefixes inside SHARDS_DIR
FORMAT = "sparse_tf"
HF_FORMAT = "sparse_tf.hf_gpt2"
_CSR_FORMAT = "sparse_tf.csr.v1"
_STEP_DIR = re.compile(rf"^{STEP_DIR_PREFIX}(\d+)$")


class CheckpointError(SparseTFError):
    """A checkpoint or model folder is missing, corrupt, truncated or incompatible."""


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / step_dir_name(step)


def is_checkpoint_name(name: str) -> bool:
    """Whether `name` is a checkpoint folder's name (step-N)."""
    return _STEP_DIR.match(name) is not None


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step-N` folder in `out`, oldest first."""
    found = []
    if Path(out).is_dir():
        for p in Path(out).iterdir():
            if (m := _STEP_DIR.match(p.name)) and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    out: Path,
    *,
    model: TrainableModel,
    optimizer: SparseOptimizer,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write `OUT/step-N` (N = optimizer steps taken) atomically; keep the newest `keep_last`.

    Older checkpoints are deleted only after the new one is complete on disk, so a crash at
    any moment leaves at least the previous complete checkpoint. A replicated model is saved
    by one process (rank 0); an FSDP-sharded one by all ranks together (collective).
    """
    step = optimizer.step_count
    path = step_dir(out, step)

    def write_rest(tmp: Path) -> None:  # everything but the model and optimizer tensors
        save_file(_rng_tensors(), tmp / RNG_FILE)
        write_json(tmp / STATE_FILE, {"step": step, **state})
        _write_config(tmp, model.cfg, config)
        save_tokenizer(tokenizer, tmp)
        write_manifest(tmp)

    if is_sharded(model):
        _save_sharded(path, model, optimizer, write_rest)
        main = dist.get_rank() == 0
    else:
        with atomic_dir(path) as tmp:
            save_file(_cpu(model.state_dict()), tmp / MODEL_FILE)
            save_file(_optimizer_tensors(optimizer), tmp / OPTIMIZER_FILE)
            write_rest(tmp)
        main = True
    if main:
        for _, old in list_checkpoints(out)[:-keep_last]:
            remove_dir(old)
    if is_sharded(model):
        dist.barrier()  # the checkpoint is complete before any rank goes on
    return path


def _save_sharded(
    path: Path,
    model: TrainableModel,
    optimizer: SparseOptimizer,
    write_rest: Callable[[Path], None],
) -> None:
    """An FSDP-sharded model's checkpoint: every rank writes its shards into one temporary
    folder (an agreed name: the leftover of a crash is removed on resume); rank 0 then adds
    the other files (`write_rest`) and renames the folder into place."""
    tmp = path.with_name(f".{path.name}.sharded.tmp")
    main = dist.get_rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    _, _, tensors = _flat_state(model, optimizer)
    writer = HuggingFaceStorageWriter(str(tmp / SHARDS_DIR), save_distributed=True)
    dcp.save(tensors, storage_writer=writer)  # returns once every rank's file is written
    if main:
        write_rest(tmp)
        publish_dir(tmp, path)


def _flat_state(
    model: TrainableModel, optimizer: SparseOptimizer
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Tensor]]:
    """The model's and Adam's state dicts by parameter name (torch's `get_state_dict`: shards
    of an FSDP model, whole tensors otherwise) and one flat dict of all their tensors, named
    as in SHARDS_DIR; the flat dict shares the tensors, so loading into it fills the others."""
    model_state, optim_state = get_state_dict(model, optimizer.adam)
    flat = {_MODEL_KEY + name: t for name, t in model_state.items()}
    for name, fields in optim_state["state"].items():
        flat |= {f"{_OPTIMIZER_KEY}{name}.{field}": t for field, t in fields.items()}
    return model_state, optim_state, flat


def _dcp_load(tensors: dict[str, Tensor], folder: Path, collective: bool) -> None:
    """Fill `tensors` in place from the DCP safetensors folder (resharding as needed); every
    rank together when `collective` (sharded targets), else this process alone."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing from the checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns when it loads without a process group
            warnings.filterwarnings("ignore", message=".*load in a single process")
            dcp.load(
                tensors,
                storage_reader=HuggingFaceStorageReader(str(folder)),
                no_dist=not collective,
            )
    except (CheckpointException, RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder}: does not fit this model ({first})") from None


def newest_intact(out: Path, run_id: str, config: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of `out` whose files match its manifest (None: none), and one line
    for each newer one skipped as damaged. A checkpoint of another run (its state.json names
    another run id, or its config.json another training config than the run's `config`:
    copied from elsewhere) is a CheckpointError, not a fallback."""
    skipped = []
    for step, path in reversed(list_checkpoints(out)):
        try:
            verify(path)
        except CheckpointError as e:
            skipped.append(f"step-{step} skipped: {e}")
            continue
        state = _read_json(path / STATE_FILE)
        if isinstance(state, dict) and state.get("run_id", run_id) != run_id:
            raise CheckpointError(
                f"{path}: belongs to run {state.get('run_id')}, not to this folder's run "
                f"{run_id} (copied from another run?); move it away to resume"
            )
        saved = _read_json(path / CONFIG_FILE)
        if not isinstance(saved, dict) or saved.get("train") != config:
            raise CheckpointError(
                f"{path / CONFIG_FILE}: the training config differs from the run's run.json "
                "(copied from another run?); move the checkpoint away to resume"
            )
        return path, skipped
    return None, skipped


def load_checkpoint(
    path: Path, model: TrainableModel, optimizer: SparseOptimizer, *, check_files: bool = True
) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `path` in place (after verifying every file's
    checksum, unless `check_files` is False: the caller just did); returns the contents of
    state.json.

    Any checkpoint loads into any model of the same config, sharded or not: a sharded
    checkpoint is resharded to this run's ranks; a replicated one is split by each rank."""
    path = Path(path)
    if check_files:
        verify(path)
    state = _read_json(path / STATE_FILE)
    if not isinstance(state, dict) or not all(
        type(state.get(key)) is int and state[key] >= 0 for key in ("step", "data_position")
    ):
        raise CheckpointError(
            f"{path / STATE_FILE}: needs integer 'step' and 'data_position' >= 0 (edited by hand?)"
        )
    if (path / SHARDS_DIR).is_dir():
        model_state, optim_state, tensors = _flat_state(model, optimizer)
        _dcp_load(tensors, path / SHARDS_DIR, collective=is_sharded(model))
        set_state_dict(
            model, optimizer.adam, model_state_dict=model_state, optim_state_dict=optim_state
        )
        if not isinstance(state.get("step"), int) or state["step"] < 0:
            raise CheckpointError(f"{path / STATE_FILE}: no valid step")
        optimizer.step_count = state["step"]
    elif is_sharded(model):
        _load_replicated_into_sharded(path, model, optimizer)
    else:
        _load_params(model, path / MODEL_FILE)
        _load_optimizer(optimizer, _load_tensors(path / OPTIMIZER_FILE), path / OPTIMIZER_FILE)
    if optimizer.step_count != state.get("step"):
        raise CheckpointError(f"{path / STATE_FILE}: step disagrees with the optimizer state")
    rng = _load_tensors(path / RNG_FILE)
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return state


def verify(path: Path, *, present_only: bool = False) -> None:
    """Raise CheckpointError naming the first file whose size or sha256 is not the manifest's,
    or that is missing (unless `present_only`: an export may ship without its dense weights)."""
    path = Path(path)
    manifest = _read_json(path / MANIFEST_FILE)
    try:
        files = dict(manifest["files"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path / MANIFEST_FILE}: malformed manifest") from None
    for name, expect in files.items():
        f = path / name
        if not f.is_file():
            if present_only:
                continue
            raise CheckpointError(f"{f}: missing from the checkpoint")
        if f.stat().st_size != expect["bytes"]:
            raise CheckpointError(
                f"{f}: {f.stat().st_size} bytes, expected {expect['bytes']} (truncated or "
                "corrupt checkpoint)"
            )
        if file_sha256(f) != expect["sha256"]:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt checkpoint)")


def write_manifest(folder: Path) -> None:
    """manifest.json: the size and sha256 of every file under `folder` (written last, so a
    folder with a manifest is complete); `verify` checks a folder against it."""
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    write_json(folder / MANIFEST_FILE, {"format": FORMAT, "files": files})


def _optimizer_tensors(opt: SparseOptimizer) -> dict[str, Tensor]:
    """Adam state by parameter name: '{name}.exp_avg', '.exp_avg_sq', '.step'; and 'step'."""
    out = {"step": torch.tensor(opt.step_count, dtype=torch.int64)}
    names = opt.param_names
    for index, st in opt.adam.state_dict()["state"].items():
        for key, value in st.items():
            out[f"{names[index]}.{key}"] = value.detach().cpu().contiguous()
    return out


def _optimizer_state_by_name(
    opt: SparseOptimizer, tensors: dict[str, Tensor], file: Path
) -> dict[str, dict[str, Tensor]]:
    """optimizer.safetensors' tensors as parameter name → {'exp_avg': ..., ...}."""
    state: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key == "step":
            continue
        name, _, field = key.rpartition(".")
        if name not in opt.param_names:
            raise CheckpointError(f"{file}: state for unknown parameter {name!r}")
        state.setdefault(name, {})[field] = value
    return state


def _load_replicated_into_sharded(path: Path, model: TrainableModel, opt: SparseOptimizer) -> None:
    """A checkpoint of a replicated run (whole tensors) into an FSDP model: every rank reads
    the files and keeps its rows (torch's `set_state_dict` with full state dicts)."""
    model_file, optim_file = path / MODEL_FILE, path / OPTIMIZER_FILE
    params = _load_tensors(model_file)
    _check_params(params, model.state_dict(), model_file)
    tensors = _load_tensors(optim_file)
    _, optim_state = get_state_dict(model, opt.adam)  # for its param_groups (names, settings)
    full = {
        "state": _optimizer_state_by_name(opt, tensors, optim_file),
        "param_groups": optim_state["param_groups"],
    }
    try:
        set_state_dict(
            model,
            opt.adam,
            model_state_dict=params,
            optim_state_dict=full,
            options=StateDictOptions(full_state_dict=True),
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{optim_file}: does not fit this model's optimizer ({e})") from None
    opt.step_count = int(tensors["step"])


def _load_optimizer(opt: SparseOptimizer, tensors: dict[str, Tensor], file: Path) -> None:
    by_name = {n: i for i, n in enumerate(opt.param_names)}
    state = {
        by_name[name]: fields
        for name, fields in _optimizer_state_by_name(opt, tensors, file).items()
    }
    full = opt.adam.state_dict()
    full["state"] = state
    try:
        opt.adam.load_state_dict(full)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{file}: does not fit this model's optimizer ({e})") from None
    opt.step_count = int(tensors["step"])


def _rng_tensors() -> dict[str, Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


# ---------------------------------------------------------------------------------------------
# Export and loading
# ---------------------------------------------------------------------------------------------


def export_model(
    path: Path,
    model: TrainableModel,
    tokenizer: Tokenizer | None,
    config: dict[str, Any] | None = None,
    *,
    compressed: bool = True,
    results: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write a shareable model folder atomically; returns the size in bytes of each weights
    file written. Every folder ends with manifest.json (size and sha256 of each file, checked
    on load), and has a model card, README.md, made from the configs and `results` (what is
    known of the result: `val_loss`, `tasks`; see `sparse_tf.model_card`).

    A `GPT`: dense (and compressed) weights, config.json and tokenizer.json (none without a
    tokenizer: a model converted from a checkpoint that came without its own). The compressed
    file stores every sparse matrix as CSR (int32 row pointers, int16 column indices where
    they fit, values in the weight dtype); everything else is stored dense. Both files load
    to bit-identical parameters. Dense models gain nothing from it: pass `compressed=False`.

    A `DenseGPT2`: a Hugging Face folder (`save_pretrained`: config.json + model.safetensors)
    plus tokenizer.json and sparse_tf.json (the training config), which
    `sparse_tf.bridges.load_gpt2` reads. Other models export themselves (`SelfExporting`: the
    bridged pair writes its sparse model plus the bridges).
    """
    if isinstance(model, DenseGPT2):
        return _export_hf(Path(path), model, tokenizer, config, results)
    if not isinstance(model, GPT):
        exporting: SelfExporting = model  # type: ignore[assignment]
        return exporting.export(Path(path), tokenizer, config)
    with atomic_dir(Path(path)) as tmp:
        sizes = write_model_files(
            tmp, model, tokenizer, config, compressed=compressed, results=results
        )
        write_manifest(tmp)
        return sizes


def write_model_card(
    folder: Path,
    model_cfg: ModelConfig,
    config: Mapping[str, Any] | None,
    results: Mapping[str, Any] | None = None,
) -> None:
    """README.md, the model card of the folder (`sparse_tf.model_card`)."""
    card = model_card(model_cfg.to_dict(), config, results)
    atomic_write_text(folder / MODEL_CARD_FILE, card)


def _export_hf(
    path: Path,
    model: DenseGPT2,
    tokenizer: Tokenizer,
    config: dict[str, Any] | None,
    results: Mapping[str, Any] | None,
) -> dict[str, int]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one small file: no "Writing model shards" bar
    with atomic_dir(path) as tmp:
        model.hf.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        write_json(tmp / HF_TRAIN_CONFIG_FILE, {"format": HF_FORMAT, "train": config})
        write_model_card(tmp, model.cfg, config, results)
        write_manifest(tmp)  # last: checked by load_gpt2
        return {f.name: f.stat().st_size for f in sorted(tmp.glob("*.safetensors"))}


def write_model_files(
    folder: Path,
    model: GPT,
    tokenizer: Tokenizer | None,
    config: dict[str, Any] | None,
    *,
    compressed: bool,
    results: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """`export_model`'s files, into an existing (temporary) folder; returns the sizes of the
    weights files. For exports that add files of their own (bridges)."""
    save_file(_cpu(model.state_dict()), folder / MODEL_FILE)
    if compressed:
        tensors, meta = compress_state(model)
        save_file(tensors, folder / SPARSE_MODEL_FILE, metadata=meta)
    _write_config(folder, model.cfg, config)
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)
    write_model_card(folder, model.cfg, config, results)
    return {f.name: f.stat().st_size for f in sorted(folder.glob("*.safetensors"))}


def compress_state(model: GPT) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The model's parameters with every sparse matrix in CSR form, and the safetensors
    metadata that describes the layout."""
    state = _cpu(model.state_dict())
    tensors: dict[str, Tensor] = {}
    shapes = {}
    for w in model.sparse_weights():
        dense = state.pop(w.name)  # [rows, cols]
        rows, cols = dense.shape
        nz = dense != 0
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(nz.sum(1), 0, out=crow[1:])
        col_dtype = torch.int16 if cols <= torch.iinfo(torch.int16).max + 1 else torch.int32
        tensors[f"{w.name}::crow"] = crow.to(torch.int32 if crow[-1] < 2**31 else torch.int64)
        tensors[f"{w.name}::col"] = nz.nonzero()[:, 1].to(col_dtype)  # row-major order
        tensors[f"{w.name}::val"] = dense[nz].contiguous()
        shapes[w.name] = [rows, cols]
    tensors.update(state)
    return tensors, {"format": _CSR_FORMAT, "shapes": json.dumps(shapes)}


def decompress_state(
    tensors: dict[str, Tensor], meta: dict[str, str], file: Path
) -> dict[str, Tensor]:
    """Inverse of `compress_state`: a dense state dict."""
    if meta.get("format") != _CSR_FORMAT:
        raise CheckpointError(
            f"{file}: not a sparse_tf compressed model (format {meta.get('format')!r})"
        )
    try:
        shapes = json.loads(meta["shapes"])
        state = {k: v for k, v in tensors.items() if "::" not in k}
        for name, (rows, cols) in shapes.items():
            crow = tensors[f"{name}::crow"].long()
            col = tensors[f"{name}::col"].long() % cols  # int16 indices ≥ 2^15 come back negative
            val = tensors[f"{name}::val"]
            row = torch.repeat_interleave(torch.arange(rows), crow.diff())
            dense = torch.zeros(rows, cols, dtype=val.dtype)
            dense[row, col] = val
            state[name] = dense
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file}: corrupt compressed model ({e})") from None
    return state


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, check_files: bool = True
) -> GPT:
    """Load a model folder written by training (`OUT/final`, `OUT/step-N`) or `export_model`,
    or one of OpenAI's released circuit_sparsity models (beeg_config.json + final_model.pt:
    `sparse_tf.official`).

    Reads config.json and model.safetensors, or model.sparse.safetensors when that is the only
    weights file. The model is returned in eval mode on `device`. Every file is first checked
    against the folder's manifest.json (a flipped bit is an error, not a model);
    `check_files=False` skips that (it reads every byte once more).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model folder")
    if not (path / CONFIG_FILE).is_file() and official.is_official(path):
        return official.load(path, device)
    if check_files and (path / MANIFEST_FILE).is_file():
        verify(path, present_only=True)
    config = _read_json(path / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE}: not a sparse_tf model config")
    try:
        cfg = model_config(config["model"], source=str(path / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if isinstance(cfg, GPT2Config):
        raise CheckpointError(
            f"{path}: holds a {GPT2Config.ARCH} model; a run's final/ folder of it is a Hugging "
            "Face folder (sparse_tf.bridges.load_gpt2)"
        )
    files = [path / n for n in (MODEL_FILE, SPARSE_MODEL_FILE) if (path / n).is_file()]
    if weights := next(iter(files), None):  # before building: a config may claim any size
        _check_config_fits(cfg, _file_shapes(weights), weights, path / CONFIG_FILE)
    with torch.device(device):
        model = GPT(cfg)
    if (path / MODEL_FILE).is_file():
        _load_params(model, path / MODEL_FILE)
    elif (path / SHARDS_DIR).is_dir():  # a checkpoint of a sharded (FSDP) run
        state = model.state_dict()
        _dcp_load({_MODEL_KEY + k: v for k, v in state.items()}, path / SHARDS_DIR, False)
    elif (path / SPARSE_MODEL_FILE).is_file():
        file = path / SPARSE_MODEL_FILE
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: unreadable ({e})") from None
        _load_params(model, file, decompress_state(_load_tensors(file), meta, file))
    else:
        raise CheckpointError(
            f"{path}: holds none of {MODEL_FILE}, {SPARSE_MODEL_FILE}, {SHARDS_DIR}/"
        )
    mark_sparse(model, count_nonzeros(model))  # lets the layers use the sparse matmul
    return model.eval()


def _file_shapes(file: Path) -> dict[str, list[int]]:
    """The shape of every parameter in a weights file (dense or compressed), from its header
    alone."""
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            names = [k for k in f.keys() if "::" not in k]  # noqa: SIM118 - not a dict
            shapes = {k: list(f.get_slice(k).get_shape()) for k in names}
        if meta.get("format") == _CSR_FORMAT:
            shapes.update(json.loads(meta["shapes"]))
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    return shapes


def _check_config_fits(
    cfg: GPTConfig, shapes: dict[str, list[int]], file: Path, config_file: Path
) -> None:
    """The config's depth and widths are those of the weights in `file`, so that building its
    model allocates no more than the file holds (a config claiming a million layers would
    otherwise fill memory before any shape is compared)."""
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    if n_layer != cfg.n_layer:
        raise CheckpointError(
            f"{config_file}: n_layer {cfg.n_layer}, but {file.name} holds {n_layer} layers"
        )
    expected = {
        "embed.weight": [cfg.vocab_size, cfg.d_model],
        "blocks.0.attn.qkv.weight": [3 * cfg.n_head * cfg.d_head, cfg.d_model],
        "blocks.0.mlp.in_proj.weight": [cfg.d_mlp, cfg.d_model],
    }
    for name, shape in expected.items():
        if name in shapes and shapes[name] != shape:
            raise CheckpointError(
                f"{config_file}: needs {name} of shape {shape}, but {file.name} holds "
                f"{shapes[name]}"
            )


def _write_config(folder: Path, model_cfg: ModelConfig, config: dict[str, Any] | None) -> None:
    write_json(
        folder / CONFIG_FILE,
        {
            "format": FORMAT,
            # What the Hugging Face Hub reads from a repository's config.json to name its
            # library (folders written before it was added load the same).
            "model_type": FORMAT,
            "version": __version__,
            "model": model_cfg.to_dict(),
            "train": config,
        },
    )


def _load_params(
    model: TrainableModel, file: Path, tensors: dict[str, Tensor] | None = None
) -> None:
    tensors = _load_tensors(file) if tensors is None else tensors
    _check_params(tensors, model.state_dict(), file)
    model.load_state_dict(tensors)


def _check_params(tensors: dict[str, Tensor], own: dict[str, Tensor], file: Path) -> None:
    """The names and (global) shapes of `tensors` are those of the state dict `own`."""
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: parameters do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise CheckpointError(
                f"{file}: {name} has shape {list(t.shape)}, "
                f"the config needs {list(own[name].shape)}"
            )


def _load_tensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None


def _read_json(file: Path) -> Any:
    try:
        return read_json(file)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
