"""What the studies share: their small models (trained here, or loaded), activations at a
hook site, and the report (a table of ours-vs-paper rows, and a JSON record)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparse_tf import sites
from sparse_tf.checkpoint import load_model
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.devices import resolve_device
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import CONFIG_FILE, FINAL_DIR, REPORT_JSON_FILE, REPORT_TEXT_FILE, RUN_FILE
from sparse_tf.hooks import HookFn
from sparse_tf.io import atomic_write_text, write_json
from sparse_tf.model import GPT
from sparse_tf.presets import preset
from sparse_tf.provenance import git_revision, package_versions
from sparse_tf.training import RunOptions, train

KINDS = ("dense", "sparse")


class StudyError(SparseTFError):
    """A study cannot run with the models or options it was given."""


@dataclasses.dataclass
class StudyModel:
    """One model of a study: where it lives and what it is."""

    label: str
    """'dense seed 0', 'sparse seed 1', or the folder of a given model."""
    kind: str
    """'dense', 'sparse' or 'given'."""
    path: Path
    model: GPT

    def token_ids(self, symbols: Sequence[str]) -> list[int]:
        """The model's ids of `symbols` (its tokenizer must know every one)."""
        tok = load_tokenizer(self.path)
        ids = [tok.token_to_id(s) for s in symbols]
        if None in ids:
            missing = [s for s, i in zip(symbols, ids, strict=True) if i is None]
            raise StudyError(f"{self.path}: the tokenizer has no token for {missing[:5]}")
        return ids  # type: ignore[return-value]


def study_models(
    preset_name: str,
    kinds: Sequence[str],
    seeds: int,
    out: Path,
    *,
    steps: int | None,
    device: str,
    overwrite: bool,
    data_source: str | None = None,
) -> list[StudyModel]:
    """Train (or reuse) `seeds` models of every kind in OUT/models/KIND-seedN: 'sparse' is the
    preset, 'dense' its dense twin. A finished run of the same config is loaded, not retrained;
    an interrupted one is resumed; one of another config is an error unless `overwrite`."""
    models = []
    for kind in kinds:
        if kind not in KINDS:
            raise StudyError(f"--kinds {kind!r}: choose from {KINDS}")
        name = preset_name if kind == "sparse" else f"dense-{preset_name}"
        for seed in range(seeds):
            cfg = dataclasses.replace(preset(name), seed=seed)
            if steps is not None:
                cfg = dataclasses.replace(cfg, max_steps=steps)
            if data_source is not None:
                cfg = dataclasses.replace(
                    cfg, data=dataclasses.replace(cfg.data, source=data_source)
                )
            run = out / "models" / f"{kind}-seed{seed}"
            exists = (run / RUN_FILE).is_file()
            print(f"{name} seed {seed}: {run}", file=sys.stderr)
            opts = RunOptions(
                out=str(run),
                resume=exists and not overwrite,
                overwrite=exists and overwrite,
                device=device,
                wandb="disabled",
                progress="none",
                eval_every=0,
                ckpt_every=cfg.max_steps,
                keep_last=1,
            )
            result = train(cfg, opts)
            model = load_model(result.final, _device(device))
            models.append(StudyModel(f"{kind} seed {seed}", kind, result.final, model))
    return models


def default_folder(name: str, noise: float = 0.0) -> Path:
    """Where a study keeps its models and report by default: runs/analyze-NAME (-epsX on the
    factored process with noise ε = X)."""
    return Path(f"runs/analyze-{name}{f'-eps{noise:g}' if noise else ''}")


def analysed_models(
    preset_name: str,
    out: Path,
    *,
    given: Sequence[str] = (),
    kinds: Sequence[str] = KINDS,
    seeds: int = 2,
    steps: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    noise: float = 0.0,
) -> list[StudyModel]:
    """The models a study analyses: the `given` folders, else its own (`study_models` of
    `preset_name` in OUT/models, trained on the factored process with noise ε = `noise` when
    it is not 0)."""
    if given:
        return given_models(given, device)
    return study_models(
        preset_name,
        kinds,
        seeds,
        out,
        steps=steps,
        device=device,
        overwrite=overwrite,
        data_source=f"process:factored-eps{noise:g}" if noise else None,
    )


def given_models(paths: Sequence[str], device: str) -> list[StudyModel]:
    """Models from folders (a run's final/ or step-N/, or an export)."""
    out = []
    for p in paths:
        path = Path(p)
        if (path / FINAL_DIR).is_dir() and not (path / CONFIG_FILE).is_file():
            path = path / FINAL_DIR  # a run folder: its export
        out.append(StudyModel(str(p), "given", path, load_model(path, _device(device))))
    return out


def _device(spec: str) -> torch.device:
    return resolve_device(spec, "--device")


@torch.no_grad()
def site_activations(
    model: GPT,
    tokens: Tensor,
    site: str,
    batch: int = 256,
    hooks: Sequence[tuple[str, HookFn]] = (),
) -> Tensor:
    """Activations [N, T, d] (float32, CPU) at hook `site` for tokens [N, T] (any alias of the
    model's hook names), with `hooks` applied (e.g. an edit at an earlier site)."""
    name = model.resolve_hook_name(site)
    device = next(model.parameters()).device
    parts: list[Tensor] = []

    def grab(x: Tensor, hook: object) -> None:
        parts.append(x.float().cpu())

    with model.hooks([*hooks, (name, grab)]):
        for i in range(0, len(tokens), batch):
            model(tokens[i : i + batch].to(device))
    return torch.cat(parts)


@torch.no_grad()
def logits(
    model: GPT, tokens: Tensor, batch: int = 256, hooks: Sequence[tuple[str, HookFn]] = ()
) -> Tensor:
    """Logits [N, T, vocab] (float32, CPU) for tokens [N, T] under `hooks`."""
    device = next(model.parameters()).device
    with model.hooks(list(hooks)):
        return torch.cat(
            [
                model(tokens[i : i + batch].to(device)).float().cpu()
                for i in range(0, len(tokens), batch)
            ]
        )


def final_site(model: GPT) -> str:
    """The residual stream after the last block (what the final norm and unembedding read)."""
    return sites.final_resid_name(model.cfg.n_layer)


def residual_sites(model: GPT) -> list[str]:
    """Every residual site: entering each attention and MLP sublayer, and after the last block."""
    return [hook for _, hook in sites.residual_sites(model.cfg.n_layer)]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a report: a statistic, ours, and the paper's value (or what to expect)."""

    statistic: str
    ours: str
    paper: str = ""


def format_table(title: str, rows: Sequence[Row]) -> str:
    width = max([len(r.statistic) for r in rows] + [9])
    ours = max([len(r.ours) for r in rows] + [4])
    lines = [title, f"{'statistic':<{width}}  {'ours':<{ours}}  paper"]
    lines += [f"{r.statistic:<{width}}  {r.ours:<{ours}}  {r.paper}".rstrip() for r in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def fmt_range(values: Sequence[float], digits: int = 3) -> str:
    """'a', or 'a … b' (min … max)."""
    if len(values) == 0:
        return "-"
    lo, hi = min(values), max(values)
    return fmt(lo, digits) if np.isclose(lo, hi) else f"{fmt(lo, digits)} … {fmt(hi, digits)}"


def write_report(out: Path, name: str, text: str, record: dict[str, Any]) -> None:
    """OUT/report.txt and OUT/report.json (the record with versions and git revision)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / REPORT_TEXT_FILE, text + "\n")
    write_json(
        out / REPORT_JSON_FILE,
        {"analysis": name, "versions": package_versions(), "git": git_revision(), **record},
    )


def save_study(
    out: Path,
    name: str,
    report: Any,
    models: Sequence[StudyModel],
    options: dict[str, Any],
) -> None:
    """OUT/report.txt (the report's table) and OUT/report.json: the options the study ran
    with, its models and the report."""
    record = {
        "options": options,
        "models": [{"label": m.label, "kind": m.kind, "path": str(m.path)} for m in models],
        "report": jsonable(report.to_dict()),
    }
    write_report(out, name, report.table(), record)


def jsonable(x: Any) -> Any:
    """numpy/complex values as JSON (complex → [re, im])."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, complex | np.complexfloating):
        return [float(x.real), float(x.imag)]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x
