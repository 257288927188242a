"""Circuit size, weight-sparse vs dense at matched pretraining loss (Gao et al. 2025, Fig. 2).

    python benchmarks/circuit_size.py --out runs/circuit-size                 # GPU: hours
    python benchmarks/circuit_size.py --out runs/circuit-size-tiny --tiny     # CPU: minutes
    python benchmarks/circuit_size.py --model runs/my-sparse/final --dense-widths 128 256 512

1. The sparse model: --model (a trained model folder), or trained here from --preset.
2. Dense baselines, two families: AbsTopK off (`dense`, the presets' dense twin) and AbsTopK
   kept with dense weights (`dense-abstopk`), each at every --dense-widths, each width trained at
   every --dense-lrs on the sparse model's data for --dense-steps (default: the sparse
   model's), every run its own full schedule to the end (warmup, decay to zero): never a
   checkpoint taken mid-run. The best LR of each width by pretraining val loss is kept; where
   it is at an end of the sweep, the sweep is widened beyond that end, one LR per round (up
   to --lr-rounds rounds), and the report says where it is still at an end (the optimum may
   lie outside it).
3. Matching: the sparse model's pretraining val loss (the whole val split, the same
   measurement for every model) is matched in each family by the two widths whose losses bracket
   it, and a dense circuit's edges (and nodes) at that loss are interpolated log-linearly in
   the loss between theirs (--match interpolate); or the nearest width's are taken (--match
   nearest, and whenever no two widths bracket it). The output says which, per family.
4. Tasks: every task (--tasks) except those marked `not_for_circuits` (the reason is printed),
   and only those every compared model solves (task loss on val pairs <= --task-max-loss).
5. Pruning: every compared model on every task at every --targets loss, with the same search
   (--budget completed trials of an Optuna study; the studies of all circuits in
   OUT/studies.db) and the same settings (--prune.*). The targets of a model and task are one
   job, whose searches share each trial's mask training (`prune_model_targets`: the same
   circuits as separate runs, the masks trained once).
6. Output (OUT/circuit_size.{md,png,html,json}): a table per task (nodes and edges of both
   sides per target), the geometric mean of the dense/sparse edge ratio over the tasks where
   both circuits meet the target with a bootstrap 95% interval over tasks, per target and per
   family, a table of the ratio by dense width (each pruned dense model against the sparse
   one: the matched widths, or every width with --every-width, which shows how much the
   matched figure depends on the widths that stand for the dense side), the matched ratio as
   every pair of pruned widths that brackets the sparse loss would give it (several pairs
   where a family's loss is not monotone in width), the matched ratio at every smaller
   search budget (1, 2, 4, ... trials: each circuit the best of its search's first trials,
   which is what a search of that budget keeps), and a plot of edges vs target loss.

Every step skips what its output folder already holds (see `circuit_runs`): run the same
command again after a kill and it continues.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from circuit_runs import (
    TINY_TASKS,
    BenchError,
    CircuitSize,
    RunFlags,
    Scores,
    base_config,
    budgets_up_to,
    circuit_tasks,
    fmt,
    geomean,
    lr_key,
    md_table,
    model_scores,
    parse_args,
    png_bytes,
    prune_grid,
    pyplot,
    rnd,
    run_main,
    size_within,
    solved_tasks,
    train_models,
    width_key,
    with_l0,
    with_lr,
    with_width,
    write_report,
)

from sparse_tf.presets import dense_twin
from sparse_tf.pruning import PruneConfig
from sparse_tf.pruning.compare import (
    LossMatch,
    bracketing_matches,
    geomean_interval,
    match_loss,
)
from sparse_tf.tasks import TASKS
from sparse_tf.training import TrainConfig

DEFAULT_TARGETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)


@dataclass(frozen=True)
class Args(RunFlags):
    """Circuit size of a weight-sparse model vs dense baselines at matched pretraining loss."""

    out: str = "runs/circuit-size"
    """Output folder: models, scores, circuits, studies and the report (resumable)."""
    tiny: bool = False
    """Tiny models on a task corpus, few steps, 2 tasks, budget 1: a CPU check in minutes."""
    preset: str | None = "circuits-d512"
    """The sparse model's preset (trained into OUT/models/sparse)."""
    model: str | None = None
    """A trained sparse model folder instead (its config.json shapes the baselines)."""
    dense_widths: tuple[int, ...] = (64, 128, 256, 512)
    """d_model of the dense baselines (multiples of the model's d_head)."""
    dense_lrs: tuple[float, ...] = (0.0032, 0.0064, 0.0128, 0.0256)
    """Peak learning rates tried at each width; the best val loss is kept. On the standard
    library at widths 64-256 (benchmarks/RESULTS.md, 2026-12-07) the best were 0.0128 and
    0.0256, 0.0256 diverged at d256, and 0.0016 (the smallest of the earlier default sweep) was
    the worst at every width: a sweep that stops below 0.0128 leaves these dense models
    short of their best loss."""
    lr_rounds: int = 2
    """Rounds of widening the LR sweeps: after the sweep, a width whose best LR is at an end
    of its sweep gets one more LR beyond that end (at the sweep's own ratio between the two
    LRs there), trained and scored in a round of its own, until every width's best LR lies
    inside its sweep or this many rounds have run (the report flags what is still at an end).
    0: the sweep as given."""
    dense_steps: int | None = None
    """Training steps of the dense baselines; default: the sparse model's."""
    families: tuple[Literal["dense", "dense-abstopk"], ...] = ("dense", "dense-abstopk")
    """Dense baselines without AbsTopK and with it (reported separately)."""
    match: Literal["interpolate", "nearest"] = "interpolate"
    """Dense circuit size at the sparse model's loss: interpolated between the two widths that
    bracket it, or the nearest width's."""
    every_width: bool = False
    """Also prune the best-LR model of every width that is not matched, on the same tasks, so
    that the report's ratio by width shows how much the figure depends on which widths stand
    for the dense side (two widths can reach the same loss with different circuit sizes)."""
    tasks: tuple[str, ...] = tuple(TASKS)
    targets: tuple[float, ...] = DEFAULT_TARGETS
    """Target task losses of the circuits (the paper's default is 0.15)."""
    task_max_loss: float = 0.15
    """A task is compared only if every compared model's own task loss (val pairs) is at most
    this: a model that does not do a task has no circuit for it."""
    budget: int = 8
    """Completed pruning trials (Optuna study) per circuit, the same for every model."""
    prune: PruneConfig = PruneConfig()  # noqa: RUF009 - frozen
    """Pruning settings (--prune.steps, ...); its budget and target come from --budget and
    --targets."""
    mean_windows: int = 256
    """Windows of the training corpus the ablation means are taken over."""
    score_pairs: int = 256
    """Val pairs per task to score the models on (the --task-max-loss check)."""
    bootstrap: int = 10_000
    """Bootstrap resamples of the tasks for the ratio's interval."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune.budget != PruneConfig().budget:
            raise BenchError("--prune.budget: give the search budget as --budget")
        if self.prune.target_loss != PruneConfig().target_loss:
            raise BenchError("--prune.target-loss: give the target losses as --targets")
        if not self.dense_widths or not self.dense_lrs or not self.targets or not self.families:
            raise BenchError("--dense-widths, --dense-lrs, --targets, --families: none empty")
        if self.budget < 1:
            raise BenchError(f"--budget {self.budget}: must be >= 1")
        if self.lr_rounds < 0:
            raise BenchError(f"--lr-rounds {self.lr_rounds}: must be >= 0")


TINY = Args(
    out="runs/circuit-size-tiny",
    tiny=True,
    preset=None,
    dense_widths=(16, 32),
    dense_lrs=(0.01,),  # one: the sweep's choice is the same code with more candidates
    tasks=TINY_TASKS,
    targets=(0.5, 0.65),
    # Tiny models learn the tasks a little (calibrated, their circuits get under chance) but
    # stay overconfident (their own loss, uncalibrated, is above chance): no real threshold.
    task_max_loss=2.0,
    budget=1,
    # Few val pairs make the one-standard-error margin wide: the paper's exact criterion.
    prune=PruneConfig(
        steps=20, batch_pairs=8, n_train=64, n_val=64, n_test=64, curve_points=2, margin_se=0
    ),
    mean_windows=16,
    score_pairs=64,
    bootstrap=1000,
)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(Args, Args(), TINY, argv, __doc__ or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = base_config(out, preset_name=args.preset, model=args.model, tiny=args.tiny)

    # 1-2. The models.
    runs = dense_runs(base, args)
    todo = {run.key: (run.cfg, out / "models" / run.key) for run in runs}
    if args.model is None:
        todo = {"sparse": (base, out / "models" / "sparse"), **todo}
    tasks, skipped = circuit_tasks(args.tasks)
    if not tasks:
        raise BenchError("no task left to compare (every one is not for circuits)")
    models = train_models(todo, args.device, args.jobs, args.cuda_graphs)
    if args.model is not None:
        models = {"sparse": Path(args.model), **models}

    # Scores of every model; the sweeps widened where a width's best LR is at an end.
    def score(trained: dict[str, Path]) -> dict[str, Scores]:
        return {
            k: model_scores(p, tasks, args.score_pairs, args.device, out / "scores" / f"{k}.json")
            for k, p in trained.items()
        }

    scores = score(models)
    for _ in range(args.lr_rounds):
        more = widened(runs, scores)
        if not more:
            break
        runs += more
        todo = {run.key: (run.cfg, out / "models" / run.key) for run in more}
        trained = train_models(todo, args.device, args.jobs, args.cuda_graphs)
        models |= trained
        scores |= score(trained)
    sparse_loss = scores["sparse"].val_loss
    best = best_lrs(runs, scores)

    # 3. Matching: which widths of each family stand for the sparse model's loss.
    losses = {
        name: {w: scores[run.key].val_loss for w, run in widths.items()}
        for name, widths in best.items()
    }
    matches = {
        name: match_loss(fam, sparse_loss, interpolate=args.match == "interpolate")
        for name, fam in losses.items()
    }
    compared = ["sparse"] + [best[name][w].key for name, m in matches.items() for w in m.keys]
    pruned = compared + (
        [run.key for widths in best.values() for run in widths.values()] if args.every_width else []
    )
    for name, m in matches.items():
        print(f"{name}: {m.describe(losses[name])} (sparse val loss {sparse_loss:.4f})")

    # 4. Tasks every compared model solves.
    tasks, unsolved = solved_tasks(tasks, {k: scores[k] for k in compared}, args.task_max_loss)
    skipped |= unsolved
    if not tasks:
        raise BenchError(
            f"no task left: none is solved (task loss <= {args.task_max_loss:g}) by every "
            "compared model; see above"
        )

    # 5. Pruning.
    prune_cfg = dataclasses.replace(args.prune, budget=args.budget)
    sizes = prune_grid(
        {key: models[key] for key in pruned},
        tasks,
        args.targets,
        out,
        prune_cfg,
        device=args.device,
        mean_windows=args.mean_windows,
        jobs=args.jobs,
    )

    # 6. The report.
    results = assemble(args, models, scores, runs, best, matches, tasks, skipped, sizes)
    results["seconds"] = round(time.perf_counter() - start, 1)
    markdown = report(results)
    paths = write_report(out, "circuit_size", TITLE, markdown, plot(results), results)
    print(markdown)
    print(f"wrote {', '.join(str(p) for p in paths)} ({results['seconds']:.0f} s)")


TITLE = "Circuit size: weight-sparse vs dense at matched pretraining loss"


@dataclass(frozen=True)
class DenseRun:
    family: str
    width: str
    """`d{d_model}`: the key of a width within its family."""
    lr: float
    key: str
    """The model's key: its folder name under OUT/models."""
    cfg: TrainConfig


def dense_runs(base: TrainConfig, args: Args) -> list[DenseRun]:
    """Every family at every width and LR, trained for --dense-steps."""
    steps = args.dense_steps or base.max_steps
    runs = []
    for name in args.families:
        if name == "dense":
            fam = dense_twin(base)
        else:
            if getattr(base.model, "afrac", None) is None:
                print(f"{name}: skipped, the sparse model has no AbsTopK to keep")
                continue
            fam = with_l0(base, 1.0)
        fam = dataclasses.replace(fam, max_steps=steps)
        for w in args.dense_widths:
            for lr in args.dense_lrs:
                key = run_key(name, width_key(w), lr)
                runs.append(DenseRun(name, width_key(w), lr, key, with_lr(with_width(fam, w), lr)))
    return runs


def run_key(family: str, width: str, lr: float) -> str:
    """A dense model's key (its folder under OUT/models), e.g. `dense-d128-lr0.0064`."""
    return f"{family}-{width}-{lr_key(lr)}"


def best_lrs(runs: list[DenseRun], scores: dict[str, Scores]) -> dict[str, dict[str, DenseRun]]:
    """{family: {width: its run with the lowest pretraining val loss}}."""
    best: dict[str, dict[str, DenseRun]] = {}

    def loss(run: DenseRun) -> float:  # a run that diverged to nan is never the best
        value = scores[run.key].val_loss
        return value if math.isfinite(value) else math.inf

    for run in runs:
        widths = best.setdefault(run.family, {})
        if run.width not in widths or loss(run) < loss(widths[run.width]):
            widths[run.width] = run
    return best


def widened(runs: list[DenseRun], scores: dict[str, Scores]) -> list[DenseRun]:
    """One more run for each width whose best LR is at an end of its sweep (`sweep_edge`): at
    the LR beyond that end, at the ratio of the two LRs there (4 significant digits, so that
    its key and config read back the same on a rerun)."""
    more = []
    for widths in best_lrs(runs, scores).values():
        for run in widths.values():
            edge = sweep_edge(run, runs)
            if edge is None:
                continue
            lrs = sorted(o.lr for o in runs if (o.family, o.width) == (run.family, run.width))
            lr = lrs[-1] ** 2 / lrs[-2] if edge == "largest" else lrs[0] ** 2 / lrs[1]
            lr = float(f"{lr:.4g}")
            if lr in lrs:  # sweeps too dense to step past at 4 digits
                continue
            print(f"{run.family} {run.width}: the best LR, {run.lr:g}, is the sweep's {edge}; "
                  f"adding {lr:g}")  # fmt: skip
            key = run_key(run.family, run.width, lr)
            more.append(dataclasses.replace(run, lr=lr, key=key, cfg=with_lr(run.cfg, lr)))
    return more


def sweep_edge(run: DenseRun, runs: list[DenseRun]) -> str | None:
    """ "largest" or "smallest" where the best LR of `run`'s width is at that end of a sweep of
    several LRs (the sweep does not bracket the optimum: a wider one may give a lower loss),
    else None."""
    lrs = sorted(
        other.lr for other in runs if (other.family, other.width) == (run.family, run.width)
    )
    if len(lrs) < 2:
        return None
    return "largest" if run.lr == lrs[-1] else "smallest" if run.lr == lrs[0] else None


def family_point(
    match: LossMatch, sizes: dict[str, CircuitSize], losses: dict[str, float]
) -> dict[str, Any]:
    """A family's circuit at the matched loss from its matched widths' circuits `sizes`
    {width: size}: interpolated (or taken) over the widths whose circuit meets the target; a
    width that misses it is left out and the rest said to be used alone. Edge and node counts
    are floored at 1 for the logs."""
    met = [w for w in match.keys if sizes[w].reached]
    if not met:
        return {
            "reached": False,
            "nodes": None,
            "edges": None,
            "match": "every matched circuit misses the target",
        }
    if len(met) == len(match.keys):
        used, note = match, match.describe(losses)
    else:
        used = LossMatch(match.loss, "nearest", (met[0],), (1.0,))
        missed = ", ".join(w for w in match.keys if w not in met)
        note = f"{met[0]} alone ({missed} misses the target)"
    return {
        "reached": True,
        "nodes": rnd(used.value({w: max(1, sizes[w].nodes) for w in used.keys})),
        "edges": rnd(used.value({w: max(1, sizes[w].edges) for w in used.keys})),
        "match": note,
    }


def assemble(
    args: Args,
    models: dict[str, Path],
    scores: dict[str, Scores],
    runs: list[DenseRun],
    best: dict[str, dict[str, DenseRun]],
    matches: dict[str, LossMatch],
    tasks: list[str],
    skipped: dict[str, str],
    sizes: dict[str, dict[str, dict[float, CircuitSize]]],
) -> dict[str, Any]:
    """Everything the report shows, rounded as it is shown (results.json = the tables)."""
    sparse_loss = scores["sparse"].val_loss
    fam_losses = {
        name: {w: scores[run.key].val_loss for w, run in widths.items()}
        for name, widths in best.items()
    }
    circuits: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, list[float]]] = {n: {} for n in matches}
    for task in tasks:
        circuits[task] = {}
        for target in args.targets:
            s = sizes["sparse"][task][target]
            row: dict[str, Any] = {"sparse": dataclasses.asdict(s)}
            for name, m in matches.items():
                fam_sizes = {w: sizes[best[name][w].key][task][target] for w in m.keys}
                point = family_point(m, fam_sizes, fam_losses[name])
                point["widths"] = {w: dataclasses.asdict(c) for w, c in fam_sizes.items()}
                point["ratio"] = None
                if point["reached"] and s.reached:
                    point["ratio"] = round(point["edges"] / max(1, s.edges), 2)
                    ratios[name].setdefault(f"{target:g}", []).append(point["ratio"])
                row[name] = point
            circuits[task][f"{target:g}"] = row
    summary = {
        name: {
            f"{t:g}": _interval(by_target.get(f"{t:g}", []), args.bootstrap) for t in args.targets
        }
        for name, by_target in ratios.items()
    }
    by_width = {
        name: {
            w: by_width_entry(args, sizes[run.key], sizes["sparse"], tasks, scores[run.key])
            for w, run in best[name].items()
            if run.key in sizes
        }
        for name in matches
    }
    # The matched ratio as every pair of pruned widths that brackets the sparse loss gives it.
    by_pair = {
        name: [
            {
                "keys": list(m.keys),
                "text": m.describe(fam_losses[name]),
                "matched": m.keys == matches[name].keys,
                **ratio_entry(
                    args, m, {w: sizes[best[name][w].key] for w in m.keys}, sizes["sparse"], tasks
                ),
            }
            for m in bracketing_matches(fam_losses[name], sparse_loss)
            if all(best[name][w].key in sizes for w in m.keys)
        ]
        for name in matches
    }
    # The matched ratio at every smaller search budget, read off the trials of this one.
    by_budget = {
        name: [
            {"budget": b, **budget_entry(args, m, best[name], sizes, tasks, b)}
            for b in budgets_up_to(args.budget)
        ]
        for name, m in matches.items()
        if all(best[name][w].key in sizes for w in m.keys)
    }
    return {
        "title": TITLE,
        "config": _jsonable(dataclasses.asdict(args)),
        "sparse": {"model": str(models["sparse"]), "val_loss": round(sparse_loss, 4)},
        "dense": {
            name: {
                "widths": {
                    w: {
                        "model": run.key,
                        "lr": run.lr,
                        "val_loss": round(scores[run.key].val_loss, 4),
                        "sweep": {
                            f"{other.lr:g}": round(scores[other.key].val_loss, 4)
                            for other in runs
                            if (other.family, other.width) == (name, w)
                        },
                        "edge": sweep_edge(run, runs),
                    }
                    for w, run in best[name].items()
                },
                "match": matches[name].to_dict()
                | {"text": matches[name].describe(fam_losses[name])},
            }
            for name in matches
        },
        "tasks": tasks,
        "skipped": skipped,
        "circuits": circuits,
        "ratio": summary,
        "by_width": by_width,
        "by_pair": by_pair,
        "by_budget": by_budget,
        "notes": [
            "edges: nonzero weights between kept nodes (the paper's count; residual links apart)",
            "a circuit meets its target on the val split, where its size is chosen; one that "
            "misses it is left out of the ratio",
            "edge and node counts are floored at 1 for logs and ratios",
        ],
    }


def by_width_entry(
    args: Args,
    sizes: dict[str, dict[float, CircuitSize]],
    sparse: dict[str, dict[float, CircuitSize]],
    tasks: list[str],
    score: Scores,
) -> dict[str, Any]:
    """One pruned dense model's edges against the sparse model's, task by task, at every
    target: the per-task ratios (None where either circuit misses its target) and their
    geometric mean with its interval."""
    alone = LossMatch(score.val_loss, "exact", ("model",), (1.0,))
    return {
        "val_loss": round(score.val_loss, 4),
        **ratio_entry(args, alone, {"model": sizes}, sparse, tasks),
    }


def budget_entry(
    args: Args,
    match: LossMatch,
    widths: dict[str, DenseRun],
    sizes: dict[str, dict[str, dict[float, CircuitSize]]],
    tasks: list[str],
    budget: int,
) -> dict[str, Any]:
    """The matched ratio with every circuit as its search stood at `budget` completed trials
    (`size_within`), and the geometric mean over tasks of each side's edges (the circuits that
    meet their target): whether a larger search shrinks sparse and dense circuits alike."""

    def within(key: str) -> dict[str, dict[float, CircuitSize]]:
        return {
            task: {t: size_within(sizes[key][task][t], budget) for t in args.targets}
            for task in tasks
        }

    sparse = within("sparse")
    dense = {w: within(widths[w].key) for w in match.keys}
    edges: dict[str, dict[str, float | None]] = {"sparse": {}, "dense": {}}
    for t in args.targets:
        s = [max(1, sparse[task][t].edges) for task in tasks if sparse[task][t].reached]
        d = [
            match.value({w: max(1, dense[w][task][t].edges) for w in match.keys})
            for task in tasks
            if all(dense[w][task][t].reached for w in match.keys)
        ]
        edges["sparse"][f"{t:g}"] = rnd(geomean(s)) if s else None
        edges["dense"][f"{t:g}"] = rnd(geomean(d)) if d else None
    return {"edges": edges, **ratio_entry(args, match, dense, sparse, tasks)}


def ratio_entry(
    args: Args,
    match: LossMatch,
    sizes: dict[str, dict[str, dict[float, CircuitSize]]],
    sparse: dict[str, dict[float, CircuitSize]],
    tasks: list[str],
) -> dict[str, Any]:
    """The dense edges that `match` makes of its widths' circuits `sizes` ({width: {task:
    {target: size}}}; counts floored at 1) over the sparse model's, task by task at every
    target (None where any of the circuits misses its target), and their geometric mean with
    its interval."""
    ratios: dict[str, list[float | None]] = {}
    for t in args.targets:
        row: list[float | None] = []
        for task in tasks:
            s, dense = sparse[task][t], {w: sizes[w][task][t] for w in match.keys}
            if not (s.reached and all(d.reached for d in dense.values())):
                row.append(None)
                continue
            edges = rnd(match.value({w: max(1, d.edges) for w, d in dense.items()}))
            assert edges is not None
            row.append(round(edges / max(1, s.edges), 2))
        ratios[f"{t:g}"] = row
    return {
        "ratios": ratios,
        "ratio": {
            t: _interval([v for v in values if v is not None], args.bootstrap)
            for t, values in ratios.items()
        },
    }


def _interval(ratios: list[float], n_boot: int) -> dict[str, Any]:
    if not ratios:
        return {"estimate": None, "low": None, "high": None, "n": 0}
    iv = geomean_interval(ratios, n_boot=n_boot)
    return {
        "estimate": rnd(iv.estimate, 2),
        "low": rnd(iv.low, 2),
        "high": rnd(iv.high, 2),
        "n": iv.n,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def edges_cell(edges: float | int | None, reached: bool) -> str:
    """An edge count as the tables write it: ✗ marks a circuit that misses its target."""
    return fmt(edges) + ("" if reached else " ✗")


def interval_cell(iv: dict[str, Any]) -> str:
    """A ratio with its interval and number of tasks, e.g. `12.16 (10.04 - 14.89, 4)`."""
    if iv["n"] == 0:
        return "-"
    return f"{fmt(iv['estimate'], 2)} ({fmt(iv['low'], 2)} - {fmt(iv['high'], 2)}, {iv['n']})"


def edge_cells(edges: dict[str, dict[str, float | None]], targets: list[float]) -> list[str]:
    """Each side's mean edges at every target, sparse then dense (a `budget_entry`'s)."""
    return [fmt(edges[side][f"{t:g}"]) for t in targets for side in ("sparse", "dense")]


def ratio_section(
    title: str,
    note: str,
    head: list[str],
    rows: list[tuple[list[str], dict[str, Any]]],
    targets: list[float],
) -> list[str]:
    """A report section: a table of ratios with their intervals at every target, one row per
    (leading cells, entry with its "ratio" by target)."""
    head = head + [f"/sparse at {t:g} (95% interval, tasks)" for t in targets]
    table = [
        cells + [interval_cell(entry["ratio"][f"{t:g}"]) for t in targets] for cells, entry in rows
    ]
    return [f"## {title}", "", note, "", md_table(head, table), ""]


def report(r: dict[str, Any]) -> str:
    fams = list(r["dense"])
    lines = [
        f"# {r['title']}",
        "",
        f"Sparse model: {r['sparse']['model']}, pretraining val loss {r['sparse']['val_loss']:.4f} "
        "(the whole val split; the same measurement for every model).",
        "",
        "## Dense baselines (best LR per width by val loss; each its own full schedule)",
        "",
    ]
    rows = []
    for name in fams:
        for w, d in r["dense"][name]["widths"].items():
            sweep = ", ".join(f"{lr} {v:.4f}" for lr, v in d["sweep"].items())
            rows.append([name, w, f"{d['lr']:g}", f"{d['val_loss']:.4f}", sweep])
    lines += [md_table(["family", "width", "best lr", "val loss", "lr sweep (val loss)"], rows)]
    edges = [
        f"{name} {w} ({d['edge']}, {d['lr']:g})"
        for name in fams
        for w, d in r["dense"][name]["widths"].items()
        if d["edge"]
    ]
    if edges:
        lines += [
            "",
            f"Best LR at an end of the sweep: {', '.join(edges)}. The sweep does not bracket "
            "these widths' optimum, so a wider one (--dense-lrs, more --lr-rounds) may give lower "
            "losses and another match.",
        ]
    lines += [""] + [f"Matching, {name}: {r['dense'][name]['match']['text']}." for name in fams]
    lines += ["", "## Tasks", "", f"Compared: {', '.join(r['tasks'])}."]
    lines += [f"Skipped {task}: {why}." for task, why in r["skipped"].items()]
    lines += [
        "",
        "## Edge ratio dense / sparse (geometric mean over tasks, bootstrap 95% interval)",
        "",
    ]
    head = ["target"]
    for name in fams:
        head += [f"{name}/sparse", "95% interval", "tasks"]
    rows = []
    for t in r["config"]["targets"]:
        row = [f"{t:g}"]
        for name in fams:
            iv = r["ratio"][name][f"{t:g}"]
            span = "-" if iv["n"] == 0 else f"{fmt(iv['low'], 2)} - {fmt(iv['high'], 2)}"
            row += [fmt(iv["estimate"], 2), span, str(iv["n"])]
        rows.append(row)
    lines += [md_table(head, rows), ""]
    targets = r["config"]["targets"]
    lines += ratio_section(
        "Edge ratio by dense width",
        "Each pruned dense model against the sparse model, whatever its own loss: how much the "
        "matched ratio depends on which widths stand for the dense side (--every-width prunes "
        "every width; otherwise only the matched ones are here).",
        ["family", "width", "val loss"],
        [
            ([name, w, f"{d['val_loss']:.4f}"], d)
            for name in fams
            for w, d in r["by_width"][name].items()
        ],
        targets,
    )
    pairs = [
        ([name, d["text"], "yes" if d["matched"] else "no"], d)
        for name in fams
        for d in r["by_pair"][name]
    ]
    if pairs:
        lines += ratio_section(
            "Edge ratio by bracketing pair of widths",
            "The matched ratio as each pair of pruned widths whose losses lie on both sides of "
            "the sparse model's would give it (matched: the pair of closest losses, which the "
            "ratio above uses). Several pairs where a family's loss is not monotone in width; "
            "only the matched pair unless --every-width.",
            ["family", "pair", "matched"],
            pairs,
            targets,
        )
    budgets = [
        ([name, str(d["budget"]), *edge_cells(d["edges"], targets)], d)
        for name in fams
        for d in r["by_budget"].get(name, [])
    ]
    if r["config"]["budget"] > 1 and budgets:
        lines += ratio_section(
            "Edge ratio by search budget",
            "The matched ratio as a search of each smaller budget would have given it: every "
            "circuit the best of its search's first trials (`kept_within`; the same circuit a "
            "search of that budget keeps), with each side's edges (geometric mean over the tasks "
            "whose circuits meet the target, dense interpolated as above). Where the ratio still "
            "moves at the largest budget, a larger search would move it further.",
            ["family", "budget"]
            + [f"{side} edges at {t:g}" for t in targets for side in ("sparse", "dense")],
            budgets,
            targets,
        )
    lines += ["## Circuits per task", ""]
    lines += ["✗: the circuit misses its target loss (val split) and is left out of the ratio.", ""]
    for task, by_target in r["circuits"].items():
        lines += [f"### {task}", ""]
        head = ["target", "sparse nodes", "sparse edges"]
        for name in fams:
            head += [f"{name} nodes", f"{name} edges", f"{name}/sparse"]
        rows, notes = [], []
        for t, row in by_target.items():
            s = row["sparse"]
            cells = [t, fmt(s["nodes"]), edges_cell(s["edges"], s["reached"])]
            for name in fams:
                d = row[name]
                cells += [fmt(d["nodes"]), edges_cell(d["edges"], d["reached"]), fmt(d["ratio"], 2)]
                if d["match"] != r["dense"][name]["match"]["text"]:
                    notes.append(f"target {t}, {name}: {d['match']}.")
            rows.append(cells)
        lines += [md_table(head, rows), ""] + notes + ([""] if notes else [])
    lines += ["Notes: " + "; ".join(r["notes"]) + "."]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any]) -> bytes:
    """Edges vs target loss: thin lines per task, bold the geometric mean over the tasks whose
    circuit meets the target (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"sparse": "black", "dense": "tab:blue", "dense-abstopk": "tab:orange"}
    targets = [float(t) for t in r["config"]["targets"]]
    for side in ["sparse", *r["dense"]]:
        per_target: dict[float, list[float]] = {t: [] for t in targets}
        for by_target in r["circuits"].values():
            xs, ys = [], []
            for t in targets:
                c = by_target[f"{t:g}"][side]
                if c["reached"]:
                    xs.append(t)
                    ys.append(max(1.0, c["edges"]))
                    per_target[t].append(max(1.0, c["edges"]))
            ax.plot(xs, ys, color=colours[side], alpha=0.25, linewidth=0.8, marker=".")
        xs = [t for t in targets if per_target[t]]
        ys = [geomean(per_target[t]) for t in xs]
        ax.plot(xs, ys, color=colours[side], linewidth=2.5, marker="o", label=side)
    ax.set_yscale("log")
    ax.set_xlabel("target task loss")
    ax.set_ylabel("circuit edges")
    ax.set_title("circuit edges vs target loss (thin: per task; bold: geometric mean)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return png_bytes(fig)


if __name__ == "__main__":
    run_main(main)
