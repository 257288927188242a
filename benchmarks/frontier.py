"""The capability-interpretability frontier (Gao et al. 2025, Fig. 3): pretraining loss vs
circuit size over a sweep of weight-sparse models.

    python benchmarks/frontier.py --out runs/frontier                      # GPU: hours
    python benchmarks/frontier.py --out runs/frontier-tiny --tiny          # CPU: minutes

1. Trains one weight-sparse model per (--widths x --l0s), the --preset's recipe at that
   d_model and L0 (4 layers, d_model 256-512 on a GPU by default).
2. Scores them; the tasks are those every model solves (task loss on val pairs <=
   --task-max-loss), less those marked `not_for_circuits`.
3. Prunes every model on every task at --target with the same search (--budget trials).
4. Output (OUT/frontier.{md,png,html,json}): per model its pretraining val loss and the mean
   circuit size (edges; geometric and arithmetic mean over the tasks where every model's circuit
   meets the target, so that the means are over the same tasks), a plot of loss vs mean edges
   (one line per L0 through its widths), and per L0 whether going wider moved the frontier:
   lower loss and smaller circuits ("improves"), both higher ("worsens"), or a trade ("mixed"),
   read from the numbers.

Every step skips what its output folder already holds: run it again after a kill.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_runs import (
    TINY_TASKS,
    BenchError,
    CircuitSize,
    RunFlags,
    base_config,
    circuit_tasks,
    fmt,
    geomean,
    md_table,
    model_scores,
    parse_args,
    png_bytes,
    prune_grid,
    pyplot,
    rnd,
    run_main,
    solved_tasks,
    train_models,
    width_key,
    with_l0,
    with_width,
    write_report,
)

from sparse_tf.pruning import PruneConfig
from sparse_tf.tasks import TASKS

TITLE = "Capability-interpretability frontier: pretraining loss vs circuit size"


@dataclass(frozen=True)
class Args(RunFlags):
    """Pretraining loss vs mean circuit size over a width x L0 sweep of weight-sparse models."""

    out: str = "runs/frontier"
    """Output folder: models, scores, circuits, studies and the report (resumable)."""
    tiny: bool = False
    """Tiny models on a task corpus, few steps, 2 tasks, budget 1: a CPU check in minutes."""
    preset: str | None = "circuits-d512"
    """The recipe every model follows but for its width and L0."""
    widths: tuple[int, ...] = (256, 384, 512)
    """d_model of the models (multiples of d_head)."""
    l0s: tuple[float, ...] = (1 / 16, 1 / 32)
    """Fractions of nonzero weights."""
    tasks: tuple[str, ...] = tuple(TASKS)
    target: float = 0.15
    """Target task loss of every circuit."""
    task_max_loss: float = 0.15
    """A task is used only if every model's own task loss (val pairs) is at most this."""
    budget: int = 8
    """Completed pruning trials (Optuna study) per circuit."""
    prune: PruneConfig = PruneConfig()  # noqa: RUF009 - frozen
    """Pruning settings (--prune.*); budget and target from --budget and --target."""
    mean_windows: int = 256
    score_pairs: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune.budget != PruneConfig().budget:
            raise BenchError("--prune.budget: give the search budget as --budget")
        if self.prune.target_loss != PruneConfig().target_loss:
            raise BenchError("--prune.target-loss: give the target loss as --target")
        if len(self.widths) < 2 or not self.l0s:
            raise BenchError("--widths: at least 2 (the frontier's direction); --l0s: at least 1")
        if self.budget < 1:
            raise BenchError(f"--budget {self.budget}: must be >= 1")


TINY = Args(
    out="runs/frontier-tiny",
    tiny=True,
    preset=None,
    widths=(32, 48, 64),  # d_model 16 learns neither task in the tiny run's steps
    l0s=(1 / 4, 1 / 2),
    tasks=TINY_TASKS,
    target=0.65,
    task_max_loss=2.0,  # no real threshold: see circuit_size.py's TINY
    budget=1,
    prune=PruneConfig(
        steps=20, batch_pairs=8, n_train=64, n_val=64, n_test=64, curve_points=2, margin_se=0
    ),
    mean_windows=16,
    score_pairs=64,
)


@dataclass(frozen=True)
class Point:
    key: str
    width: int
    l0: float


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(Args, Args(), TINY, argv, __doc__ or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = base_config(out, preset_name=args.preset, model=None, tiny=args.tiny)

    points = [
        Point(f"{width_key(w)}-l0{l0:g}", w, l0) for l0 in sorted(args.l0s) for w in args.widths
    ]
    runs = {
        p.key: (with_l0(with_width(base, p.width), p.l0), out / "models" / p.key) for p in points
    }
    models = train_models(runs, args.device, args.jobs, args.cuda_graphs)
    tasks, skipped = circuit_tasks(args.tasks)
    scores = {
        k: model_scores(m, tasks, args.score_pairs, args.device, out / "scores" / f"{k}.json")
        for k, m in models.items()
    }
    tasks, unsolved = solved_tasks(tasks, scores, args.task_max_loss)
    skipped |= unsolved
    if not tasks:
        raise BenchError(f"no task left: none is solved by every model (<= {args.task_max_loss:g})")

    prune_cfg = dataclasses.replace(args.prune, budget=args.budget)
    sizes = prune_grid(
        models,
        tasks,
        [args.target],
        out,
        prune_cfg,
        device=args.device,
        mean_windows=args.mean_windows,
        jobs=args.jobs,
    )
    results = assemble(
        args, points, {k: s.val_loss for k, s in scores.items()}, tasks, skipped, sizes
    )
    results["seconds"] = round(time.perf_counter() - start, 1)
    markdown = report(results)
    paths = write_report(out, "frontier", TITLE, markdown, plot(results), results)
    print(markdown)
    print(f"wrote {', '.join(str(p) for p in paths)} ({results['seconds']:.0f} s)")


def assemble(
    args: Args,
    points: list[Point],
    val_loss: dict[str, float],
    tasks: list[str],
    skipped: dict[str, str],
    sizes: dict[str, dict[str, dict[float, CircuitSize]]],
) -> dict[str, Any]:
    """The report's numbers, rounded as shown. The means are over the tasks where every model's
    circuit meets the target: a mean over different tasks per model would compare tasks."""
    t = args.target
    common = [task for task in tasks if all(sizes[p.key][task][t].reached for p in points)]
    models = []
    for p in points:
        edges = [max(1, sizes[p.key][task][t].edges) for task in common]
        models.append(
            {
                "key": p.key,
                "width": p.width,
                "l0": p.l0,
                "val_loss": round(val_loss[p.key], 4),
                "edges_geomean": rnd(geomean(edges)) if edges else None,
                "edges_mean": rnd(sum(edges) / len(edges)) if edges else None,
                "circuits": {task: dataclasses.asdict(sizes[p.key][task][t]) for task in tasks},
            }
        )
    return {
        "title": TITLE,
        "config": dataclasses.asdict(args)
        | {
            "widths": list(args.widths),
            "l0s": list(args.l0s),
            "tasks": list(args.tasks),
        },
        "tasks": tasks,
        "common_tasks": common,
        "skipped": skipped,
        "models": models,
        "verdicts": verdicts(models),
    }


def verdicts(models: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per L0, each step to the next wider model: 'improves' when both the loss and the mean
    circuit size (geometric) fall, 'worsens' when both rise, 'mixed' otherwise; and the L0's
    verdict: 'improves' or 'worsens' when every step does, else 'mixed' ('unknown' without
    circuit sizes)."""
    out: dict[str, dict[str, Any]] = {}
    for l0 in sorted({m["l0"] for m in models}):
        row = sorted((m for m in models if m["l0"] == l0), key=lambda m: m["width"])
        steps = []
        for a, b in itertools.pairwise(row):
            if a["edges_geomean"] is None or b["edges_geomean"] is None:
                kind = "unknown"
            elif b["val_loss"] < a["val_loss"] and b["edges_geomean"] < a["edges_geomean"]:
                kind = "improves"
            elif b["val_loss"] > a["val_loss"] and b["edges_geomean"] > a["edges_geomean"]:
                kind = "worsens"
            else:
                kind = "mixed"
            steps.append({"from": a["key"], "to": b["key"], "verdict": kind})
        kinds = {s["verdict"] for s in steps}
        overall = kinds.pop() if len(kinds) == 1 else "mixed"
        out[f"{l0:g}"] = {"verdict": overall, "steps": steps}
    return out


def report(r: dict[str, Any]) -> str:
    lines = [f"# {r['title']}", ""]
    lines += [
        f"Target loss {r['config']['target']:g}; circuit means over the {len(r['common_tasks'])} "
        f"tasks where every model's circuit meets it: {', '.join(r['common_tasks']) or 'none'}.",
        "",
    ]
    lines += [f"Skipped {task}: {why}." for task, why in r["skipped"].items()]
    lines += [""]
    rows = [
        [
            m["key"],
            str(m["width"]),
            f"{m['l0']:g}",
            f"{m['val_loss']:.4f}",
            fmt(m["edges_geomean"]),
            fmt(m["edges_mean"]),
        ]
        for m in r["models"]
    ]
    head = ["model", "d_model", "L0", "val loss", "edges (geometric mean)", "edges (mean)"]
    lines += [md_table(head, rows), "", "## Does the frontier improve with width at fixed L0?", ""]
    for l0, v in r["verdicts"].items():
        steps = ", ".join(f"{s['from']} -> {s['to']}: {s['verdict']}" for s in v["steps"])
        lines.append(f"L0 {l0}: {v['verdict']} ({steps}).")
    lines += [
        "",
        "improves: the wider model has both a lower val loss and a smaller mean circuit; worsens:"
        " both higher; mixed: one of each (a trade along the frontier, not a move of it).",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any]) -> bytes:
    """Val loss vs geometric-mean circuit edges, one line per L0 through its widths."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for l0 in sorted({m["l0"] for m in r["models"]}):
        row = sorted(
            (m for m in r["models"] if m["l0"] == l0 and m["edges_geomean"] is not None),
            key=lambda m: m["width"],
        )
        xs = [m["edges_geomean"] for m in row]
        ys = [m["val_loss"] for m in row]
        (line,) = ax.plot(xs, ys, marker="o", linewidth=2, label=f"L0 {l0:g}")
        for m in row:
            ax.annotate(
                f"d{m['width']}",
                (m["edges_geomean"], m["val_loss"]),
                textcoords="offset points",
                xytext=(4, 4),
                color=line.get_color(),
            )
    ax.set_xscale("log")
    ax.set_xlabel(f"circuit edges (geometric mean over tasks, target {r['config']['target']:g})")
    ax.set_ylabel("pretraining val loss")
    ax.set_title("capability vs interpretability (lower left is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return png_bytes(fig)


if __name__ == "__main__":
    run_main(main)
