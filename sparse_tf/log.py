"""Run logging: a progress bar (or plain lines when not on a terminal), metrics as JSONL in the
run directory, and Weights & Biases (offline by default where wandb is installed: the [wandb]
extra).

Metric keys are namespaced the same way everywhere: `train/…`, `val/…`, `sparsity/…`, `perf/…`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

from tqdm import tqdm

from sparse_tf.extras import install_hint, installed
from sparse_tf.filenames import METRICS_FILE
from sparse_tf.io import ProgressMode, atomic_write_text, progress_style

WANDB_INIT_TIMEOUT = 20.0
"""Seconds `--wandb online` waits for the wandb servers before logging offline instead."""
WandbMode = Literal["auto", "offline", "online", "disabled"]


def wandb_mode(mode: WandbMode) -> tuple[Literal["offline", "online", "disabled"], str | None]:
    """The mode a run logs to Weights & Biases with, and a line to say when `auto` turns it
    off: `auto` is offline where wandb is installed and disabled (metrics.jsonl only) where it
    is not, so a core install trains with its defaults. Explicit modes are taken as they are
    (`RunOptions` refuses them without wandb)."""
    if mode != "auto":
        return mode, None
    if installed("wandb"):
        return "offline", None
    return (
        "disabled",
        f"wandb: not installed, logging to {METRICS_FILE} only ({install_hint('wandb')})",
    )


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """Every record of `OUT/metrics.jsonl`, in order. Damage is skipped: an unterminated last
    line (what a process killed mid-write leaves), and any line that is not a JSON record with
    an integer "step"."""
    return _parse_metrics(Path(out) / METRICS_FILE)[0]


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], 0
    records, damaged = [], 0
    # Metrics are a log, not the source of truth: bytes that are not UTF-8 are damage too.
    for line in path.read_bytes().decode(errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and type(record.get("step")) is int:
            records.append(record)
        else:
            damaged += 1
    return records, damaged


def truncate_metrics(out: Path, last_step: int) -> int:
    """Drop records after `last_step` (a resumed run rewrites them) and damaged lines; returns
    how many damaged lines were dropped."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return 0
    records, damaged = _parse_metrics(path)
    keep = [r for r in records if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return damaged


class RunLogger:
    """Everything a training run reports, in one place.

    Args:
        out: run directory (metrics.jsonl and wandb/ go there).
        total_steps: steps of the whole run; start_step: steps already done (on resume).
        wandb: "offline" writes OUT/wandb for a later `wandb sync`; "online" streams;
            "disabled" never imports wandb; "auto" is offline if wandb is installed, else
            disabled with one line saying so (`wandb_mode`).
        run_id: stable id, so a resumed run continues the same wandb run.
        config: logged to wandb as the run config.
        progress: "bar" (tqdm), "lines" (one line per log step), "none", or "auto" (a bar on
            a terminal, lines otherwise).
    """

    def __init__(
        self,
        out: Path,
        *,
        total_steps: int,
        start_step: int,
        wandb: WandbMode,
        run_id: str,
        config: dict[str, Any],
        project: str = "sparse_tf",
        progress: ProgressMode = "auto",
        stream: TextIO | None = None,
    ) -> None:
        self.out, self.total_steps, self.start_step = Path(out), total_steps, start_step
        self.stream = stream or sys.stderr
        self.progress = progress = progress_style(progress, self.stream)
        self._t0 = time.perf_counter()
        self._bar = None
        if progress == "bar":
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                file=self.stream,
                smoothing=0.1,
            )
        self._metrics = open(self.out / METRICS_FILE, "a")  # noqa: SIM115 - open for the run
        self._wandb = None
        mode, note = wandb_mode(wandb)
        if note is not None:
            self.message(note)
        if mode != "disabled":
            self._wandb = self._start_wandb(mode, project, run_id, config)
        self._latest: dict[str, float] = {}

    def _start_wandb(
        self, mode: Literal["offline", "online"], project: str, run_id: str, config: dict[str, Any]
    ) -> Any:
        """A wandb run writing into OUT/wandb. Online needs an API key and the network: without
        either (a refusal, or no answer within WANDB_INIT_TIMEOUT s) the run logs offline
        instead and says so in one line; `wandb sync OUT/wandb/offline-run-*` uploads later."""
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb as wandb_lib  # heavy import: only when asked for

        def start(mode: str, **settings: Any) -> Any:
            return wandb_lib.init(
                project=project,
                name=self.out.name,
                id=run_id,
                resume="allow",
                dir=str(self.out),
                mode=mode,
                config=config,
                settings=wandb_lib.Settings(**settings),
            )

        if mode == "offline":
            return start("offline")
        try:
            return start("online", init_timeout=WANDB_INIT_TIMEOUT)
        except Exception as e:  # wandb raises its own kinds (UsageError, CommError, ...)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"wandb: online logging unavailable ({reason}); logging offline to "
                f"{self.out / 'wandb'} instead (upload later with `wandb sync`)",
                file=self.stream,
            )
            wandb_lib.teardown()  # the failed attempt still holds the run id in wandb's service
            return start("offline")

    def log(self, step: int, metrics: dict[str, float], *, echo: bool = True) -> None:
        """Record `metrics` at `step` (optimizer steps completed) everywhere; `echo=False`
        leaves the progress display alone."""
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if not echo:
            return
        self._latest.update(metrics)
        summary = self._summary()
        if self._bar is not None:
            self._bar.set_postfix_str(summary, refresh=False)
        elif self.progress == "lines":
            eta = self._eta(step)
            print(f"step {step}/{self.total_steps} | {summary} | ETA {eta}", file=self.stream)

    def advance(self, step: int) -> None:
        """Move the progress bar to `step` completed steps."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._metrics.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _summary(self) -> str:
        m, parts = self._latest, []
        for key, label, fmt in (
            ("train/loss", "loss", ".3f"),
            ("val/loss", "val", ".3f"),
            ("bridge/nmse_enc", "nmse enc", ".3f"),
            ("bridge/nmse_dec", "nmse dec", ".3f"),
            ("bridge/kl_d2s", "kl d>s", ".3f"),
            ("bridge/kl_s2d", "kl s>d", ".3f"),
            ("sparsity/l0", "L0", ".4f"),
            ("train/lr", "lr", ".2e"),
            ("perf/tokens_per_s", "tok/s", ",.0f"),
        ):
            if key in m:
                parts.append(f"{label} {m[key]:{fmt}}")
        return " | ".join(parts)

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self._t0) / done * (self.total_steps - step)
        return format_duration(left)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class SilentLogger:
    """The logger of ranks other than 0 in a multi-process run: rank 0 logs for the run."""

    def log(self, step: int, metrics: dict[str, float], *, echo: bool = True) -> None:
        pass

    def advance(self, step: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
