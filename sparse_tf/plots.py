"""PNG plots: a training run's curves (`sparse-tf plot RUN_DIR`) and a circuit's loss vs k (the
PNG `sparse-tf prune` writes beside circuit.html).

    RUN_DIR/plots/loss.png           train and val loss vs step and vs tokens
    RUN_DIR/plots/l0.png             the L0 schedule (fraction of weights kept)
    RUN_DIR/plots/lr.png             the learning-rate schedule
    RUN_DIR/plots/tokens_per_s.png   throughput
    RUN_DIR/plots/bridges.png        a bridged run's bridge losses (NMSE and KL, mean of sites)
    RUN_DIR/plots/plots.html         all of them embedded: one page, no network needed

A chart whose metric the run never logged (no val/loss with --data.val-frac 0) is left out.
matplotlib (the [plot] extra) is imported only when a plot is drawn, so this module costs
nothing to import and `sparse-tf plot --help` needs neither matplotlib nor torch.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparse_tf.errors import SparseTFError
from sparse_tf.extras import require
from sparse_tf.filenames import METRICS_FILE, PLOTS_DIR, PLOTS_HTML_FILE
from sparse_tf.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BRIDGE_PANELS = (
    (
        "NMSE",
        (
            ("bridge/nmse_enc", "encoder (dense -> sparse)"),
            ("bridge/nmse_dec", "decoder (sparse -> dense)"),
        ),
    ),
    ("KL", (("bridge/kl_d2s", "dense -> sparse"), ("bridge/kl_s2d", "sparse -> dense"))),
)
"""A bridged run's losses, as `sparse-tf bridge` logs them (each the mean over the sites):
the reconstruction errors of the bridges and the KL terms of the hybrid forward passes, one
panel each (their scales differ)."""
BRIDGE_KEYS = tuple(key for _, lines in BRIDGE_PANELS for key, _ in lines)

PLOTTED = (
    "train/loss",
    "val/loss",
    "val/loss_full",
    "sparsity/l0",
    "train/lr",
    "perf/tokens_per_s",
    "perf/tokens",
    *BRIDGE_KEYS,
)
"""The metrics.jsonl keys the charts read (`sparse_tf.training.loop` writes them): each must be a
number where present."""

COLOURS = {"train": "tab:blue", "val": "tab:orange", "other": "tab:green"}
DPI = 110
PLOTS_NEED = "the plots (matplotlib)"
"""What needs the [plot] extra, as its one-line error names it."""


class PlotError(SparseTFError):
    """A run folder or metrics file that cannot be plotted."""


@dataclass(frozen=True)
class Chart:
    """One figure to be saved as NAME.png."""

    name: str
    figure: Figure


# -- metrics.jsonl, read strictly ----------------------------------------------------------------


def read_run_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of RUN_DIR/metrics.jsonl, checked: a PlotError naming the file (and the line)
    when the folder or file is missing, the file holds no record, or a line is not a JSON object
    with an integer "step" and numbers for the plotted keys. Unlike `sparse_tf.log`'s reader,
    which skips damage to resume a run, a plot says where the damage is. One exception: an
    unterminated last line that does not parse is a record a running trainer is still writing,
    and is left out, so a run can be plotted while it trains."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        reason = "not a folder" if run_dir.exists() else "no such folder"
        raise PlotError(f"{run_dir}: {reason} (give a training run's folder, `train --out`)")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{path}: no such file; {run_dir} is not a training run's folder")
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        unterminated = number == len(lines)
        if unterminated and not raw.strip():
            break
        try:
            record = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError) as e:
            if unterminated:
                break
            raise PlotError(f"{path}, line {number}: not JSON ({_reason(e)})") from None
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise PlotError(f'{path}, line {number}: not a JSON object with an integer "step"')
        for key in PLOTTED:
            value = record.get(key)
            if key in record and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PlotError(f"{path}, line {number}: {key!r} is {value!r}, not a number")
        records.append(record)
    if not records:
        raise PlotError(f"{path}: empty; the run has not logged a step yet")
    if not any("train/loss" in r for r in records):
        raise PlotError(f"{path}: no record has 'train/loss'; not a training run's metrics")
    return records


def _reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):  # its own "line 1" would contradict the file's line
        return f"{e.msg} at column {e.colno}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# -- drawing ---------------------------------------------------------------------------------------


def figure(width: float, height: float, n_axes: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on the file-only Agg canvas. Built without pyplot, so it neither switches the
    backend of the caller's session (a notebook's stays) nor is kept in pyplot's figure list:
    it is freed with its last reference."""
    require("matplotlib", "plot", PLOTS_NEED)  # the package itself: its modules may be cached
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _series(
    records: Sequence[dict[str, Any]], key: str, x: str = "step"
) -> tuple[list[Any], list[Any]]:
    pairs = [(r[x], r[key]) for r in records if key in r and x in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _line(
    ax: Axes, xs: list[Any], ys: list[Any], colour: str, label: str, *, dense: bool = True
) -> None:
    # Few points (a short run, or val every N steps) get markers: a lone point stays visible.
    marker = "o" if not dense or len(xs) < 30 else None
    ax.plot(xs, ys, color=colour, marker=marker, markersize=3.5, linewidth=1.5, label=label)


def run_charts(records: Sequence[dict[str, Any]], title: str) -> list[Chart]:
    """The charts of a run's metrics records (as `read_run_metrics` returns them); figures only,
    nothing written, so their axes can be checked before saving."""
    charts = [Chart("loss", _loss_figure(records, title))]
    for name, key, ylabel, label in (
        ("l0", "sparsity/l0", "L0 (fraction of weights kept)", "L0 schedule"),
        ("lr", "train/lr", "learning rate", "learning-rate schedule"),
        ("tokens_per_s", "perf/tokens_per_s", "tokens/s", "throughput"),
    ):
        xs, ys = _series(records, key)
        if not xs:
            continue
        fig, (ax,) = figure(7, 4)
        _line(ax, xs, ys, COLOURS["other"], label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {label}")
        if name == "tokens_per_s":
            _engineering(ax, "y")
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        charts.append(Chart(name, fig))
    if any(key in r for r in records for key in BRIDGE_KEYS):
        charts.append(Chart("bridges", _bridge_figure(records, title)))
    return charts


def _bridge_figure(records: Sequence[dict[str, Any]], title: str) -> Figure:
    fig, axes = figure(12, 4, len(BRIDGE_PANELS))
    colours = (COLOURS["train"], COLOURS["val"])
    for ax, (kind, lines) in zip(axes, BRIDGE_PANELS, strict=True):
        for (key, label), colour in zip(lines, colours, strict=True):
            xs, ys = _series(records, key)
            if xs:
                _line(ax, xs, ys, colour, label)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{kind} (mean over sites)")
        ax.set_title(f"{title}: bridge {kind}")
        ax.set_yscale("log")  # the terms fall by orders of magnitude
        ax.grid(True, alpha=0.3)
        ax.legend()
    return fig


def _engineering(ax: Axes, which: str) -> None:
    from matplotlib.ticker import EngFormatter

    (ax.yaxis if which == "y" else ax.xaxis).set_major_formatter(EngFormatter())


def _loss_figure(records: Sequence[dict[str, Any]], title: str) -> Figure:
    """Train and val loss vs step, and (when the run logged its token count) vs tokens. The
    final validation on the whole split (val/loss_full) is a star at the end."""
    by_tokens = any("perf/tokens" in r for r in records)
    fig, axes = figure(12 if by_tokens else 7, 4, 2 if by_tokens else 1)
    tokens_at = {r["step"]: r["perf/tokens"] for r in records if "perf/tokens" in r}
    for ax, x in zip(axes, ("step", "perf/tokens"), strict=False):
        # The val/loss_full record carries only the step: its tokens are the step's.
        rows = records if x == "step" else [r | {x: tokens_at.get(r["step"])} for r in records]
        rows = [r for r in rows if r.get(x) is not None]
        _line(ax, *_series(rows, "train/loss", x), COLOURS["train"], "train loss")
        xs, ys = _series(rows, "val/loss", x)
        if xs:
            _line(ax, xs, ys, COLOURS["val"], "val loss (sampled windows)", dense=False)
        xs, ys = _series(rows, "val/loss_full", x)
        if xs:
            ax.plot(xs, ys, "*", color="tab:red", markersize=12, label="val loss (whole split)")
        ax.set_xlabel("step" if x == "step" else "tokens")
        ax.set_ylabel("loss (nats/token)")
        if x != "step":
            _engineering(ax, "x")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: loss")
    return fig


def loss_vs_k_figure(
    loss_vs_k: Sequence[Sequence[float]], target_loss: float, n_nodes: int, task: str
) -> Figure:
    """A circuit's loss-vs-k curve, as circuit.html draws it: the val-split task loss of the
    kept pruning run's top-k circuits (k on a log scale), the target (dashed) and the chosen
    size (ringed)."""
    points = [(int(k), float(loss)) for k, loss in loss_vs_k if k >= 1]
    fig, (ax,) = figure(7, 4.5)
    if points:
        ks, losses = zip(*points, strict=True)
        ax.plot(ks, losses, color="tab:blue", marker="o", markersize=3.5, label="top-k circuit")
        chosen = [p for p in points if p[0] == n_nodes]
        if chosen:
            k, loss = chosen[0]
            ax.plot([k], [loss], "o", markersize=12, markerfacecolor="none", markeredgewidth=2,
                    color="tab:orange", label=f"chosen: {k} nodes")  # fmt: skip
        if max(ks) > 1:
            ax.set_xscale("log")
    ax.axhline(target_loss, color="tab:green", linestyle="--", label=f"target {target_loss:g}")
    ax.set_xlabel("nodes kept (k, log scale)")
    ax.set_ylabel("task loss (val split, calibrated)")
    ax.set_title(f"{task}: loss vs circuit size")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def loss_vs_k_png(
    loss_vs_k: Sequence[Sequence[float]], target_loss: float, n_nodes: int, task: str
) -> bytes:
    """`loss_vs_k_figure` as PNG bytes; a MissingExtraError without matplotlib."""
    return png_bytes(loss_vs_k_figure(loss_vs_k, target_loss, n_nodes, task))


# -- a run's plots folder --------------------------------------------------------------------


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw the charts of the run in `run_dir` into `out` (default RUN_DIR/plots): one PNG per
    chart, then plots.html with every PNG embedded. Each file is written atomically (a temporary
    name, then a rename); returns the paths written, plots.html last."""
    require("matplotlib", "plot", PLOTS_NEED)  # before reading: what to install comes first
    run_dir = Path(run_dir)
    records = read_run_metrics(run_dir)
    out = run_dir / PLOTS_DIR if out is None else Path(out)
    title = run_dir.resolve().name
    charts = run_charts(records, title)
    out.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, bytes]] = []
    paths = []
    for chart in charts:
        png = png_bytes(chart.figure)
        path = out / f"{chart.name}.png"
        atomic_write_bytes(path, png)
        images.append((path.name, png))
        paths.append(path)
    page = out / PLOTS_HTML_FILE
    atomic_write_text(page, plots_html(title, _summary(records, run_dir), images))
    return [*paths, page]


def _summary(records: Sequence[dict[str, Any]], run_dir: Path) -> str:
    last = {}
    for r in records:
        last |= r
    parts = [f"{len(records)} log records of {run_dir / METRICS_FILE}", f"step {last['step']:,}"]
    if "perf/tokens" in last:
        parts.append(f"{last['perf/tokens']:,} tokens")
    for key, label in (("train/loss", "train loss"), ("val/loss", "val loss")):
        if key in last:
            parts.append(f"{label} {last[key]:.4f}")
    if "val/loss_full" in last:
        parts.append(f"val loss on the whole split {last['val/loss_full']:.4f}")
    return "; ".join(parts)


def plots_html(title: str, summary: str, images: Sequence[tuple[str, bytes]]) -> str:
    """A page with every (file name, PNG) embedded as a data URI: it stands alone, offline."""
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        f'alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>\n'
        for name, png in images
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}: training curves</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555}</style></head>\n"
        f"<body><h1>{html.escape(title)}: training curves</h1>\n"
        f"<p>{html.escape(summary)}</p>\n{figures}</body></html>\n"
    )
