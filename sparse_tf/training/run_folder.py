"""A run folder (`--out`): claiming it for a new, resumed or replaced run, and its run.json.

    OUT/run.json        config, options, versions, git revision, device, corpus, resumes
    OUT/config.toml     the config and options as a file: `sparse-tf train --config` of it
                        (with another --out) trains the same run again
    OUT/metrics.jsonl   one record per log step (`sparse_tf.log`)
    OUT/step-N/         checkpoints (`sparse_tf.checkpoint`)
    OUT/final/          the exported model; OUT/summary.json what the run produced
    OUT/plots/          `sparse-tf plot OUT`'s images of metrics.jsonl (`sparse_tf.plots`)

A folder is claimed under its lock (`sparse_tf.io.FolderLock`) for the run's whole life;
--overwrite removes what an earlier run wrote there and nothing else.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from sparse_tf.checkpoint import CheckpointError, is_checkpoint_name, newest_intact
from sparse_tf.config import ConfigError
from sparse_tf.config_files import to_toml
from sparse_tf.data.pipeline import Data
from sparse_tf.devices import device_info
from sparse_tf.filenames import (
    FINAL_DIR,
    METRICS_FILE,
    PLOTS_DIR,
    RUN_FILE,
    RUN_TOML_FILE,
    SUMMARY_FILE,
    WANDB_DIR,
)
from sparse_tf.io import (
    FolderLock,
    atomic_write_text,
    read_json,
    remove_leftovers,
    remove_outputs,
    user_entries,
)
from sparse_tf.log import read_metrics
from sparse_tf.provenance import git_revision, package_versions, utc_now
from sparse_tf.training.config import (  # noqa: F401 - saved_config: re-exported
    # FOLDER_FLAGS and saved_config live in the torch-free config module (`sparse-tf
    # train`'s --help and --print-config read them); importable from here as before.
    FOLDER_FLAGS,
    RunOptions,
    TrainConfig,
    TrainingError,
    saved_config,
)

RUN_FORMAT = "sparse_tf.run"
"""run.json's "format": what marks a folder as a sparse_tf run."""


def claim_out_dir(out: Path, cfg: TrainConfig, opts: RunOptions) -> FolderLock:
    """Check --out against --resume/--overwrite, lock it for this run's life (checked again
    under the lock), and clean up or create it; returns the held lock. --overwrite removes
    what the earlier run wrote and nothing else; a folder that fails the checks is left as
    it was."""
    lock = FolderLock(out, "a training run")
    if not out.is_symlink():
        lock.check_free()  # a job running there is the first thing to say
    check_out(out, cfg, opts)
    out.mkdir(parents=True, exist_ok=True)
    held = lock.acquire()
    try:
        run_info = check_out(out, cfg, opts)
        if opts.resume:
            remove_leftovers(out)  # temporaries of a write the last process did not finish
        elif run_info is not None:
            remove_outputs(out, is_run_output)  # --overwrite
    except BaseException:
        held.release()
        raise
    return held


def check_out(out: Path, cfg: TrainConfig, opts: RunOptions) -> dict[str, Any] | None:
    """run.json of the run `out` holds (None: none) if `out` suits the options, else a
    TrainingError; reads only. A resumed run's saved config must be `cfg`."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        what = "a symlink" if out.is_symlink() else "not a folder"
        raise TrainingError(f"--out {out}: is {what}; name a real folder")
    run_info = read_run_info(out) if (out / RUN_FILE).is_file() else None
    if opts.resume:
        if run_info is None:
            raise TrainingError(f"--resume: {out} holds no sparse_tf run ({RUN_FILE} missing)")
        try:
            saved = type(cfg).from_dict(run_info["config"], source=str(out / RUN_FILE))
        except (KeyError, TypeError, ConfigError) as e:
            raise TrainingError(f"--resume: {out / RUN_FILE} is unreadable ({e})") from None
        if diff := config_diff(saved.to_dict(), cfg.to_dict()):
            raise TrainingError(
                f"--resume: the config differs from the run in {out}: {'; '.join(diff)}"
            )
    elif run_info is not None and not opts.overwrite:
        raise TrainingError(
            f"--out {out} holds another run; pass --resume to continue it or "
            "--overwrite to replace it (its checkpoints, final/ and logs are removed; "
            "other files in the folder stay)"
        )
    elif run_info is None and (others := user_entries(out)):
        more = ", ..." if len(others) > 3 else ""
        raise TrainingError(
            f"--out {out}: the folder is not empty ({', '.join(others[:3])}{more}) and "
            "holds no sparse_tf run; choose a new or empty folder"
        )
    return run_info


def resume_point(
    out: Path, opts: RunOptions, *, main: bool
) -> tuple[dict[str, Any] | None, Path | None]:
    """After `claim_out_dir`: (run.json, checkpoint to load), both None for a new run. The
    checkpoint is the newest whose files are intact; damaged newer ones are named (on the
    `main` rank)."""
    if not opts.resume:
        return None, None
    run_info = read_run_info(out)  # checked by claim_out_dir: the same checks
    try:
        ckpt, skipped = newest_intact(out, run_info["id"], run_info["config"])
    except CheckpointError as e:
        raise TrainingError(f"--resume: {e}") from None
    if main:
        for line in skipped:
            print(f"warning: {line}", file=sys.stderr)
    if skipped and ckpt is None:
        raise TrainingError(
            f"--resume: no intact checkpoint in {out} ({len(skipped)} damaged: "
            f"{skipped[0]}); --overwrite starts the run again"
        )
    return run_info, ckpt


def new_run_info(
    cfg: TrainConfig, opts: RunOptions, device: torch.device, data: Data
) -> dict[str, Any]:
    """run.json of a new run: what it trains and where it came from."""
    return {
        "format": RUN_FORMAT,
        "id": uuid.uuid4().hex[:12],
        "started": utc_now(),
        "command": sys.argv,
        "config": cfg.to_dict(),
        "options": opts.to_dict(),
        "versions": package_versions(),
        "git": git_revision(),
        "device": device_info(device),
        "data": data.summary(),
        "resumes": [],
    }


def run_toml(cfg: TrainConfig, opts: RunOptions) -> str:
    """config.toml of a run: its config and options (all but `FOLDER_FLAGS`) as the TOML that
    `sparse-tf train --config` reads; every field is written, so it needs no preset."""
    header = (
        "# The config of the run in this folder:\n"
        "#   sparse-tf train --config config.toml --out NEW\n"
        "# trains it again (`sparse-tf bridge` where there is a [bridge] table).\n"
        '# TOML has no null: "None" is None.\n\n'
    )
    return to_toml(cfg, opts, exclude=FOLDER_FLAGS, header=header)


def write_run_toml(out: Path, cfg: TrainConfig, opts: RunOptions) -> None:
    """Write OUT/config.toml (atomically: a temporary name, then a rename)."""
    atomic_write_text(out / RUN_TOML_FILE, run_toml(cfg, opts))


def read_run_info(out: Path) -> dict[str, Any]:
    """run.json of the folder `out`, which must be a sparse_tf run's."""
    try:
        info = read_json(out / RUN_FILE)
    except ValueError as e:
        raise TrainingError(f"--out {out}: {e}") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise TrainingError(
            f"--out {out}: its {RUN_FILE} was not written by sparse_tf; choose another folder "
            "(nothing in this one was touched)"
        )
    for key, kind in (("id", str), ("config", dict), ("resumes", list), ("started", str)):
        if not isinstance(info.get(key), kind):
            raise TrainingError(
                f"{out / RUN_FILE}: field {key!r} is missing or not a {kind.__name__} "
                "(edited by hand?)"
            )
    return info


def is_run_output(name: str) -> bool:
    """Whether an entry of a run folder is one the run writes: run.json, config.toml,
    summary.json, metrics.jsonl, step-N/, final/, wandb/, and plots/ (drawn from metrics.jsonl
    by `sparse-tf plot`: a replaced run's would show the old curves). What --overwrite
    removes."""
    outputs = (RUN_FILE, RUN_TOML_FILE, SUMMARY_FILE, METRICS_FILE, FINAL_DIR, WANDB_DIR, PLOTS_DIR)
    return name in outputs or is_checkpoint_name(name)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts ('optim.lr 0.01 -> 0.02')."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def check_same_corpus(run_info: dict[str, Any], data: Data, out: Path) -> None:
    """A resumed run reads the corpus it started on (the data order would not continue)."""
    before = run_info.get("data", {}).get("corpus", {}).get("digest")
    now = data.corpus.digest
    if before is not None and before != now:
        raise TrainingError(
            f"--resume: the corpus changed since the run in {out} started (digest "
            f"{before[:12]} -> {now[:12]}); the data order would not continue"
        )


def read_metrics_summary(out: Path) -> dict[str, float]:
    """The last training loss and the mean tokens/s over the run's log records."""
    records = [r for r in read_metrics(out) if "train/loss" in r]
    if not records:
        return {}
    rates = [r["perf/tokens_per_s"] for r in records]
    return {"train/loss": records[-1]["train/loss"], "tokens_per_s": sum(rates) / len(rates)}
