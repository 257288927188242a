"""Prune a trained model folder and write the result folder (what `sparse-tf prune` does).

    OUT/circuit.json       the circuit, its edges, sufficiency, necessity, loss vs k, the run
    OUT/circuit.html       the viewer (open it in a browser; no server needed)
    OUT/loss_vs_k.png      the viewer's loss-vs-k curve as an image (with the [plot] extra;
                           without it, one line says it was skipped and pruning goes on)
    OUT/means.safetensors  the ablation means per hook name (reuse them with --means)
    OUT/scores.safetensors τ of every node in the kept pruning run (the ranking k cuts)

The files are written into a hidden temporary folder inside OUT and renamed into place
when all are complete, circuit.json last; anything else in OUT (the user's notes, a model) is
never touched, and OUT is locked for the run's life (a second run on it refuses, naming the
first). Ablation means are computed once per (model weights, corpus, windows) and cached beside
the tokenised corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from safetensors.torch import save
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.devices import device_info, resolve_device
from sparse_tf.errors import SparseTFError
from sparse_tf.evaluation import load_model_and_tokenizer, training_data
from sparse_tf.extras import MissingExtraError, install_hint
from sparse_tf.filenames import (
    CIRCUIT_FILE,
    HTML_FILE,
    LOSS_VS_K_FILE,
    MEANS_FILE,
    MODEL_FILE,
    SCORES_FILE,
    SPARSE_MODEL_FILE,
)
from sparse_tf.io import (
    FolderLock,
    atomic_write_bytes,
    atomic_write_text,
    cache_dir,
    file_sha256,
    fsync_dir,
    locked_folder,
    remove_leftovers,
    user_entries,
)
from sparse_tf.model import GPT
from sparse_tf.plots import loss_vs_k_png
from sparse_tf.provenance import git_revision, package_versions
from sparse_tf.pruning.circuit import Circuit, CircuitError, load_circuit
from sparse_tf.pruning.means import MODEL_DIGEST_KEY, ablation_means, load_means, save_means
from sparse_tf.pruning.nodes import node_sites
from sparse_tf.pruning.search import PruneConfig, PruneResult, prune_targets
from sparse_tf.pruning.study import check_study_file
from sparse_tf.pruning.viewer import render_html, viewer_data
from sparse_tf.tasks import SPLITS, PairsFile, PairSource, get_task

Log = Callable[[str], None]


class PruneError(SparseTFError):
    """The pruning output folder or its inputs are unusable."""


def prune_model(
    model_path: str | Path,
    task: str | PairSource,
    out: str | Path,
    cfg: PruneConfig = PruneConfig(),
    *,
    device: str = "auto",
    means_file: str | Path | None = None,
    mean_windows: int = 256,
    overwrite: bool = False,
    study: str | Path | None = None,
    log: Log = print,
) -> PruneResult:
    """Prune the model folder `model_path` for `task` and write `out` (see the module doc).

    Args:
        task: a built-in task's name, or a task's pairs (`read_pairs_file`: your own task,
            whose every candidate is checked against the model's tokenizer before any work;
            circuit.json's `pairs_file` records the file and its sha256).
        means_file: ablation means to use (a means.safetensors of an earlier run); default:
            computed over `mean_windows` windows of the model's own training corpus.
        overwrite: replace an earlier pruning result in `out`.
        study: the search's Optuna study file (SQLite; created if missing, resumed if not;
            shareable by parallel workers); None: the study lives in memory.
    """
    found = prune_model_targets(
        model_path,
        task,
        {cfg.target_loss: out},
        cfg,
        device=device,
        means_file=means_file,
        mean_windows=mean_windows,
        overwrite=overwrite,
        study=study,
        log=log,
    )
    return found[cfg.target_loss]


def prune_model_targets(
    model_path: str | Path,
    task: str | PairSource,
    outs: Mapping[float, str | Path],
    cfg: PruneConfig = PruneConfig(),
    *,
    device: str = "auto",
    means_file: str | Path | None = None,
    mean_windows: int = 256,
    overwrite: bool = False,
    study: str | Path | None = None,
    log: Log = print,
) -> dict[float, PruneResult]:
    """`prune_model` at several target losses: `outs` maps each target (in place of
    `cfg.target_loss`) to its output folder. The model and the means are loaded once, and the
    searches share their mask training (`search.prune_targets`); each folder gets what
    `prune_model` at its target would write, its circuit.json's `run` naming the targets it
    was pruned with. Every folder is checked, then locked, before any work. Arguments as in
    `prune_model`; returns target -> result."""
    start = time.perf_counter()
    if not outs:
        raise PruneError("prune_model_targets: no target loss given")
    for target in outs:  # each target checked before any work (a ConfigError naming it)
        dataclasses.replace(cfg, target_loss=target)
    folders = {target: Path(out) for target, out in outs.items()}
    if len(set(folders.values())) < len(folders):
        raise PruneError("prune_model_targets: two targets share an output folder")
    for out in folders.values():
        if not out.is_symlink():
            FolderLock(out, "a pruning run").check_free()  # a job running there: said first
        _check_out(out, overwrite)
    if study is not None:
        check_study_file(study)  # before any work
    the_task = get_task(task) if isinstance(task, str) else task
    if isinstance(the_task, PairsFile):
        for split in SPLITS:  # a split the file has no pairs of: said before any work
            the_task.pairs(1, cfg.seed, split)
    # A failed call leaves no trace: `locked_folder` removes each output folder it made, and
    # this the folders it made them in (OUT of `sparse-tf prune --targets`), if left empty.
    made = {out.parent for out in folders.values() if not out.parent.exists()}
    try:
        return _prune_into(model_path, the_task, folders, cfg, device, means_file, mean_windows,
                           overwrite, study, log, start)  # fmt: skip
    except BaseException:
        for parent in made:
            with contextlib.suppress(OSError):  # not empty: something of the user's is there
                parent.rmdir()
        raise


def _prune_into(
    model_path: str | Path,
    the_task: PairSource,
    folders: dict[float, Path],
    cfg: PruneConfig,
    device: str,
    means_file: str | Path | None,
    mean_windows: int,
    overwrite: bool,
    study: str | Path | None,
    log: Log,
    start: float,
) -> dict[float, PruneResult]:
    """`prune_model_targets` once its arguments are checked."""
    with contextlib.ExitStack() as locks:
        for out in folders.values():
            locks.enter_context(locked_folder(out, "a pruning run"))
            _check_out(out, overwrite)  # again, now that no other job can change it
            remove_leftovers(out)  # the temporaries of an interrupted run
        dev = resolve_device(device, flag="--device")
        amp = dev.type == "cuda"
        model, tok = load_model_and_tokenizer(model_path, dev)
        if isinstance(the_task, PairsFile):
            the_task.check_tokens(tok)  # every pair, before the means and the search
            asked = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
            used = ", ".join(f"{min(k, asked[s])} {s}" for s, k in the_task.counts().items())
            log(f"pairs: {used} of {the_task.path} (task {the_task.name})")
        sites = node_sites(model.cfg, final_resid=True)  # means for every site, whatever is masked
        digest = file_sha256(_weights_file(Path(model_path)))
        if means_file is not None:
            means, means_source = load_means(means_file, sites, dev, digest), str(means_file)
        else:
            means, means_source = _cached_means(
                Path(model_path), digest, model, tok, mean_windows, amp, log
            )
        searches = prune_targets(
            model, tok, the_task, means, cfg, list(folders), study=study, amp=amp, log=log
        )
        pruned_sites = node_sites(model.cfg, cfg.final_resid)
        meta = {"source": means_source, MODEL_DIGEST_KEY: digest}
        # What every circuit's `run` records, found once (the git revision is a subprocess).
        provenance = {
            "means": means_source,
            "study": None if study is None else str(study),
            "versions": package_versions(),
            "git": git_revision(),
            "device": device_info(dev),
        }
        if len(folders) > 1:  # each `seconds` is then the whole call's until that circuit
            provenance["pruned_with_targets"] = sorted(folders)
        written: dict[float, PruneResult] = {}
        for target, result in searches:  # each folder written as its search ends
            out = folders[target]
            run = {**provenance, "seconds": round(time.perf_counter() - start, 1)}
            circuit = dataclasses.replace(
                result.circuit,
                model=str(model_path),
                pairs_file=the_task.record() if isinstance(the_task, PairsFile) else None,
                run=run,
            )
            view = viewer_data(
                model, tok, the_task, circuit, pruned_sites, means, seed=cfg.seed, amp=amp
            )
            png = _loss_vs_k_png(circuit, log)
            _publish(out, circuit, means, meta, result.scores, render_html(view), png)
            written[target] = PruneResult(circuit, result.scores)
            log(circuit.summary())
            wrote = f"{out / CIRCUIT_FILE}, {out / HTML_FILE}"
            wrote += f" and {out / LOSS_VS_K_FILE}" if png is not None else ""
            log(f"wrote {wrote} ({time.perf_counter() - start:.0f} s)")
    return written


def _loss_vs_k_png(circuit: Circuit, log: Log) -> bytes | None:
    """The loss-vs-k PNG, or None (and one line saying why) where it cannot be drawn."""
    try:
        return loss_vs_k_png(circuit.loss_vs_k, circuit.target_loss, circuit.n_nodes, circuit.task)
    except MissingExtraError:
        log(f"{LOSS_VS_K_FILE}: skipped, matplotlib is not installed ({install_hint('plot')})")
    except Exception as e:  # a plot is never worth the circuit: a broken matplotlib only warns
        log(f"{LOSS_VS_K_FILE}: skipped, the plot failed ({type(e).__name__}: {e})")
    return None


def _publish(
    out: Path,
    circuit: Circuit,
    means: dict[str, Tensor],
    means_meta: dict[str, str],
    scores: dict[str, Tensor],
    html: str,
    png: bytes | None,
) -> None:
    """Write the result's files into a hidden temporary folder inside `out`, then rename each
    into place, circuit.json last: the rest of `out` is never touched. Without `png` (no
    matplotlib) an earlier result's loss_vs_k.png is removed: it would show another circuit."""
    tmp = Path(tempfile.mkdtemp(prefix=".prune.", suffix=".tmp", dir=out))
    try:
        save_means(tmp / MEANS_FILE, means, means_meta)
        atomic_write_bytes(tmp / SCORES_FILE, save(scores))  # float32, on the CPU
        atomic_write_text(tmp / HTML_FILE, html)
        names = [MEANS_FILE, SCORES_FILE, HTML_FILE]
        if png is not None:
            atomic_write_bytes(tmp / LOSS_VS_K_FILE, png)
            names.append(LOSS_VS_K_FILE)
        else:
            (out / LOSS_VS_K_FILE).unlink(missing_ok=True)
        circuit.save(tmp)
        for name in (*names, CIRCUIT_FILE):
            os.replace(tmp / name, out / name)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write into anything but a new or empty folder or one holding an earlier
    pruning result, and into that only with `overwrite` (checked before the work, so no run is
    wasted, and again under the lock)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise PruneError(f"--out {out}: is {'a symlink' if out.is_symlink() else 'not a folder'}")
    entries = user_entries(out)
    if not entries:
        return
    if CIRCUIT_FILE not in entries:
        raise PruneError(f"--out {out}: a non-empty folder that holds no pruning result")
    try:
        load_circuit(out)
    except CircuitError as e:
        raise PruneError(
            f"--out {out}: its {CIRCUIT_FILE} was not written by sparse_tf ({e}); choose another "
            "folder"
        ) from None
    if not overwrite:
        raise PruneError(
            f"--out {out}: holds a pruning result; pass --overwrite to replace it ({CIRCUIT_FILE}, "
            f"{HTML_FILE}, {LOSS_VS_K_FILE}, {MEANS_FILE} and {SCORES_FILE}; other files stay)"
        )


def _weights_file(path: Path) -> Path:
    """The weights file of a model folder whose digest identifies the model."""
    return path / MODEL_FILE if (path / MODEL_FILE).is_file() else path / SPARSE_MODEL_FILE


def _cached_means(
    path: Path, digest: str, model: GPT, tok: Tokenizer, n_windows: int, amp: bool, log: Log
) -> tuple[dict[str, Tensor], str]:
    """Means over the model's training corpus, from the cache when this model (its weights'
    sha256 `digest`) and corpus have been seen with the same number of windows."""
    try:
        _, data = training_data(path, tok)
    except SparseTFError as e:
        raise PruneError(f"cannot compute ablation means ({e}); pass --means FILE") from None
    sites = node_sites(model.cfg, final_resid=True)
    key = hashlib.sha256()
    key.update(digest.encode())
    # bf16 autocast on GPUs gives slightly different means than fp32 on CPUs: keyed apart.
    precision = "bf16" if amp else "fp32"
    key.update(f"{data.corpus.digest}/{len(data.train)}/{n_windows}/{model.cfg.n_ctx}".encode())
    key.update(precision.encode())
    file = cache_dir() / "means" / f"{key.hexdigest()[:24]}.safetensors"
    source = f"{n_windows} windows of the training split of {data.corpus.source} ({precision})"
    if file.is_file():
        log(f"ablation means: cached ({file.name})")
        return load_means(file, sites, next(model.parameters()).device, digest), source
    t = time.perf_counter()
    means = ablation_means(model, data.train, sites, n_windows=n_windows, amp=amp)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_means(file, means, {"source": source, MODEL_DIGEST_KEY: digest})
    log(f"ablation means: {source} ({time.perf_counter() - t:.1f} s)")
    return means, source
