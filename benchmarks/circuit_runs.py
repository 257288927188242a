"""What the circuit benchmarks share (`circuit_size.py`, `frontier.py`): training a list of
models resumably, scoring them, choosing the tasks, pruning each model on each task and target,
and writing the report (markdown, PNG, HTML, JSON).

Everything lands in one output folder, and every step skips what is already there, so a killed
run started again with the same command continues where it stopped. The training runs, and the
pruning of each model on each task (all its targets in one job, which trains each trial's masks
once for every target), are independent of each other: `--jobs N` runs N of them at a time,
each in its own process (on one GPU they share it; the small models of these benchmarks leave
most of it idle):

    OUT/corpus/                  the --tiny corpus (task examples), when used
    OUT/models/KEY/              one `sparse-tf train` run per model (finished: reused;
                                 interrupted: resumed from its last checkpoint)
    OUT/scores/KEY.json          its pretraining val loss (the whole val split) and task losses
    OUT/circuits/KEY/TASK/target-T/   one `sparse-tf prune` result folder per circuit
    OUT/studies.db               the Optuna studies of every circuit (one per model, task and
                                 target: the study name encodes them), resumed when run again
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import ctypes
import dataclasses
import html
import io
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tyro

from sparse_tf.data import DataConfig
from sparse_tf.errors import SparseTFError
from sparse_tf.evaluation import evaluate_model
from sparse_tf.filenames import CIRCUIT_FILE, CONFIG_FILE, FINAL_DIR, SUMMARY_FILE
from sparse_tf.io import atomic_dir, atomic_write_bytes, atomic_write_text, read_json, write_json
from sparse_tf.model import GPTConfig
from sparse_tf.presets import preset
from sparse_tf.pruning import PruneConfig, kept_within, load_circuit, prune_model_targets
from sparse_tf.sparsity import SparsityConfig
from sparse_tf.tasks import CHANCE_LOSS, get_task
from sparse_tf.training import RunOptions, TrainConfig, train
from sparse_tf.training.run_folder import config_diff, read_run_info

Log = Callable[[str], None]
T = TypeVar("T")
R = TypeVar("R")

ALL_VAL_WINDOWS = 2**31
"""`evaluate_model(val_windows=...)` above any split's size: the whole validation split."""


class BenchError(SparseTFError):
    """A benchmark cannot go on (an output folder of another config, nothing to compare)."""


# -- command lines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mode:
    tiny: bool = False


def parse_args(cls: type[T], full: T, tiny: T, argv: Sequence[str] | None, doc: str) -> T:
    """Parse the flags of `cls` in two stages, as `sparse-tf train` does: --tiny first, which
    chooses the defaults of every other flag (`tiny` or `full`), then all of them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, _ = tyro.cli(_Mode, args=argv, return_unknown_args=True, add_help=False)
    return tyro.cli(cls, args=argv, default=tiny if mode.tiny else full, description=doc)


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`, an error of the library or of its flags as one line."""
    try:
        main()
    except SparseTFError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)


def run_jobs(calls: Sequence[tuple[Callable[..., R], tuple[Any, ...]]], jobs: int) -> list[R]:
    """`f(*args)` of every (f, args) in `calls`, `jobs` at a time, each in a fresh spawned process
    (CUDA cannot be forked), or one after another in this process when `jobs` is 1; the results
    in order. `f` must be a module-level function and `args` picklable. The first failure is
    raised once the calls already running have ended (the others are not started)."""
    if jobs <= 1 or len(calls) <= 1:
        return [f(*args) for f, args in calls]
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(calls))
    with cf.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(workers, os.getpid())
    ) as pool:
        futures = [pool.submit(f, *args) for f, args in calls]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _worker_init(workers: int, parent: int) -> None:
    """Set up a worker process of `run_jobs`.

    It ends with the benchmark: a benchmark killed outright (SIGTERM, SIGKILL) cannot shut its
    pool down, and its workers would go on pruning or training for nobody, holding the CPU,
    the GPU and their output folders' locks. On Linux the kernel sends a worker SIGTERM when
    its parent dies (PR_SET_PDEATHSIG); a parent already gone by then is caught by its pid.

    It takes its share of the CPU threads: each of `workers` processes with as many threads as
    there are cores would fight over them (on 2 cores, two jobs ran 3x slower than one)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1  # <linux/prctl.h>
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise BenchError(f"--jobs {jobs}: must be >= 1")


@dataclass(frozen=True)
class RunFlags:
    """How a circuit benchmark runs: the flags `circuit_size.py` and `frontier.py` share."""

    device: str = "auto"
    jobs: int = 1
    """Training runs and circuits run this many at a time, each in its own process (on one
    GPU they share it: these small models leave most of it idle)."""
    cuda_graphs: bool = False
    """Train with `sparse-tf train --cuda-graphs` (CUDA only): each micro-batch replayed as one
    CUDA graph, without the host's launch time between the kernels, which the steps of these
    small models are mostly made of. The same models within rounding."""

    def __post_init__(self) -> None:
        check_jobs(self.jobs)


# -- configs ------------------------------------------------------------------------------------


def with_width(cfg: TrainConfig, d_model: int) -> TrainConfig:
    """The same run at another width; the MLP keeps its ratio to d_model (4x by default)."""
    model = cfg.model
    if not isinstance(model, GPTConfig):
        raise BenchError(f"only sparse_tf GPT models are widened, not {type(model).__name__}")
    assert model.d_mlp is not None  # resolved when the config was built
    d_mlp = model.d_mlp * d_model // model.d_model
    return dataclasses.replace(cfg, model=dataclasses.replace(model, d_model=d_model, d_mlp=d_mlp))


def with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


def with_l0(cfg: TrainConfig, l0: float) -> TrainConfig:
    return dataclasses.replace(cfg, sparsity=dataclasses.replace(cfg.sparsity, l0=l0))


def width_key(width: int) -> str:
    return f"d{width}"


def lr_key(lr: float) -> str:
    return f"lr{lr:g}"


# -- the models ---------------------------------------------------------------------------------

TINY_TASKS = ("lambda_func", "bracket_brace")
"""The --tiny runs' tasks: two whose deciding token is right before the prompt's end, which a
1-layer model learns in a few hundred steps on the tasks' own examples (`task_corpus`)."""


def tiny_config(corpus: Path) -> TrainConfig:
    """The --tiny sparse model: 1 layer, d_model 32, ctx 64, BPE 512 (the task tokens
    reserved), learned positions (one layer has no other way to find the previous token, which
    decides both `TINY_TASKS`), L0 1/2, AbsTopK 1/4, 600 steps of 16 x 64 tokens of `corpus`
    (a first try at 300, without learned positions, learned neither task): well under a
    minute on 2 quiet cores."""
    return TrainConfig(
        model=GPTConfig(vocab_size=512, n_ctx=64, n_layer=1, d_model=32, pos_emb=True),
        sparsity=SparsityConfig(l0=1 / 2),
        data=DataConfig(source=str(corpus), val_frac=0.1),
        max_steps=600,
        batch_size=16,
    )


def base_config(
    out: Path, *, preset_name: str | None, model: str | None, tiny: bool
) -> TrainConfig:
    """The sparse model's training config: a trained model folder's (`model`), the --tiny
    model's (on a task corpus written to OUT/corpus), or a preset's."""
    if model is not None:
        file = Path(model) / CONFIG_FILE
        saved = read_json(file).get("train")
        if not isinstance(saved, dict):
            raise BenchError(f"{file}: holds no training config to build the baselines from")
        return TrainConfig.from_dict(saved, source=str(file))
    if tiny:
        return tiny_config(task_corpus(out / "corpus", TINY_TASKS, pairs=1000))
    if preset_name is None:
        raise BenchError("name the sparse model: --preset NAME, --model PATH or --tiny")
    return preset(preset_name)


# -- the --tiny corpus --------------------------------------------------------------------------


def task_corpus(folder: Path, tasks: Sequence[str], pairs: int, per_file: int = 50) -> Path:
    """A directory corpus of the tasks' own train-split examples (both members of `pairs`
    pairs per task, a blank line between programs), for --tiny runs: tiny models trained for a
    few hundred steps on Python source learn none of the tasks, and a benchmark of circuits
    needs models that do. Its val split (held out by file) and the tasks' val and test pairs
    are other programs. Reused when it exists (it is written whole or not at all)."""
    if folder.is_dir():
        return folder
    with atomic_dir(folder) as tmp:
        for name in tasks:
            examples = [
                e.context + e.target + e.rest
                for p in get_task(name).pairs(pairs, seed=0, split="train")
                for e in (p.a, p.b)
            ]
            for i in range(0, len(examples), per_file):
                text = "\n\n".join(examples[i : i + per_file]) + "\n"
                (tmp / f"{name}-{i // per_file:04d}.py").write_text(text)
    return folder


# -- training -----------------------------------------------------------------------------------


def train_models(
    runs: Mapping[str, tuple[TrainConfig, Path]], device: str, jobs: int, cuda_graphs: bool = False
) -> dict[str, Path]:
    """`train_model` of every run (key -> (config, folder)), `jobs` at a time (`run_jobs`)."""
    calls = [(train_model, (cfg, out, device, cuda_graphs)) for cfg, out in runs.values()]
    return dict(zip(runs, run_jobs(calls, jobs), strict=True))


def train_model(
    cfg: TrainConfig, out: Path, device: str, cuda_graphs: bool = False, log: Log = print
) -> Path:
    """The exported model of the run in `out`, trained to its end: a finished run is reused,
    an interrupted one resumed from its last checkpoint, a missing one started. A run of
    another config in `out` is an error (never replaced: delete it to retrain). `cuda_graphs`:
    `sparse-tf train --cuda-graphs` (a run option: the same model within rounding)."""
    if (out / SUMMARY_FILE).is_file():
        saved = read_run_info(out)["config"]
        if diff := config_diff(saved, cfg.to_dict()):
            raise BenchError(
                f"{out} holds a finished run of another config ({'; '.join(diff[:3])}); "
                "delete it or choose another --out"
            )
        return out / FINAL_DIR
    resume = (out / "run.json").is_file()
    log(f"{'resuming' if resume else 'training'} {out}")
    start = time.perf_counter()
    opts = RunOptions(
        out=str(out),
        resume=resume,
        device=device,
        wandb="disabled",
        progress="none",
        log_every=max(1, cfg.max_steps // 10),
        eval_every=0,  # the whole val split at the end is what the comparison reads
        ckpt_every=max(1, cfg.max_steps // 10),  # a killed run loses at most a tenth
        keep_last=1,
        cuda_graphs=cuda_graphs,
    )
    result = train(cfg, opts)
    log(f"  val loss {result.summary['val_loss']:.4f} ({time.perf_counter() - start:.0f} s)")
    return result.final


# -- scores -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """A model's pretraining val loss (the whole val split of its corpus) and its loss on each
    task (val split pairs: the split the pruning selects circuits on; test stays held out)."""

    model: str
    val_loss: float
    tasks: dict[str, float]
    pairs: int


def model_scores(final: Path, tasks: Sequence[str], pairs: int, device: str, file: Path) -> Scores:
    """`Scores` of the model folder `final`, cached in `file` (recomputed when it lacks a task
    or used another number of pairs)."""
    if file.is_file():
        data = read_json(file)
        if data["pairs"] == pairs and set(tasks) <= set(data["tasks"]):
            return Scores(**data)
    report = evaluate_model(
        final, list(tasks), n=pairs, split="val", device=device, val_windows=ALL_VAL_WINDOWS
    )
    if report.val_loss is None:
        raise BenchError(f"{final}: no pretraining val loss ({report.val_note})")
    scores = Scores(str(final), report.val_loss, {s.task: s.loss for s in report.scores}, pairs)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_json(file, dataclasses.asdict(scores))
    return scores


# -- tasks --------------------------------------------------------------------------------------


def circuit_tasks(names: Sequence[str], log: Log = print) -> tuple[list[str], dict[str, str]]:
    """The tasks that circuit comparisons may use, and why each other one is left out."""
    kept, skipped = [], {}
    for name in names:
        if why := get_task(name).not_for_circuits:
            skipped[name] = f"not for circuit comparisons: {why}"
            log(f"{name}: skipped, {skipped[name]}")
        else:
            kept.append(name)
    return kept, skipped


def solved_tasks(
    names: Sequence[str], scores: Mapping[str, Scores], max_loss: float, log: Log = print
) -> tuple[list[str], dict[str, str]]:
    """The tasks every model of `scores` solves (task loss at most `max_loss`: a model that
    does not do a task has no circuit for it), and why each other one is left out."""
    kept, skipped = [], {}
    for name in names:
        failing = {k: s.tasks[name] for k, s in scores.items() if not s.tasks[name] <= max_loss}
        if failing:
            worst = ", ".join(f"{k} {v:.3f}" for k, v in failing.items())
            skipped[name] = f"task loss above {max_loss:g} (chance {CHANCE_LOSS:.3f}): {worst}"
            log(f"{name}: skipped, {skipped[name]}")
        else:
            kept.append(name)
    return kept, skipped


# -- pruning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CircuitSize:
    """What the benchmarks read of a pruned circuit (`circuit.json` has the rest)."""

    nodes: int
    edges: int
    reached: bool
    """The circuit meets the target on the val split, where its size is chosen."""
    sufficiency: float | None
    """Test-split loss of the circuit alone (calibrated); None for a smaller budget's circuit
    (`size_within`: only the kept circuit is scored on the test split)."""
    necessity: float | None
    """Test-split loss of the model with the circuit ablated (None likewise)."""
    trials: int
    """Completed trials of its search."""
    path: str


def size_within(size: CircuitSize, budget: int) -> CircuitSize:
    """The circuit that `size`'s search would have kept with `budget` completed trials
    (`kept_within`, from its circuit.json's trial records): how the size depends on the search
    budget, read off one larger search. The same as `size` at its own budget or above."""
    if budget >= size.trials:
        return size
    trial = kept_within(load_circuit(Path(size.path)).trials, budget)
    return CircuitSize(
        nodes=trial.k,
        edges=trial.n_edges,
        reached=trial.reached,
        sufficiency=None,
        necessity=None,
        trials=budget,
        path=size.path,
    )


def budgets_up_to(budget: int) -> list[int]:
    """The search budgets a report shows the sizes at: 1, 2, 4, ... and `budget` itself."""
    out = [b for b in (2**i for i in range(budget.bit_length())) if b < budget]
    return [*out, budget]


def circuit_dir(root: Path, key: str, task: str, target: float) -> Path:
    return root / "circuits" / key / task / f"target-{target:g}"


def prune_grid(
    models: Mapping[str, Path],
    tasks: Sequence[str],
    targets: Sequence[float],
    root: Path,
    cfg: PruneConfig,
    *,
    device: str,
    mean_windows: int,
    jobs: int = 1,
    log: Log = print,
) -> dict[str, dict[str, dict[float, CircuitSize]]]:
    """Prune every model of `models` (key -> final folder) on every task at every target loss
    (`circuit_dir`), with the search budget of `cfg` and the studies in ROOT/studies.db: key ->
    task -> target -> size. One job per model and task prunes all its targets together (the
    mask training shared: `prune_model_targets`); the jobs of every model share one pool of
    `jobs` processes (`run_jobs`), so that no model's last job holds up the next model's.
    A circuit already pruned with this config and at least this budget is read, not pruned
    again, and sized as its search stood at this budget (`size_within`); one with a smaller
    budget is pruned again with its study resumed (its trials count towards the budget)."""
    study = root / "studies.db"
    wants = {
        (key, t, x): dataclasses.replace(cfg, target_loss=x)
        for key in models
        for t in tasks
        for x in targets
    }
    folders = {c: circuit_dir(root, *c) for c in wants}
    todo: dict[tuple[str, str], list[float]] = {}  # (key, task) -> targets still to prune
    for c in wants:
        if not _pruned_with(folders[c], wants[c]):
            todo.setdefault(c[:2], []).append(c[2])
    calls = []
    for (key, task), xs in todo.items():
        outs = {x: folders[key, task, x] for x in xs}
        calls.append((_prune_circuits, (models[key], task, outs, cfg, device, mean_windows, study)))
    seconds = dict(zip(todo, run_jobs(calls, jobs), strict=True))
    out: dict[str, dict[str, dict[float, CircuitSize]]] = {}
    for (key, task, target), folder in folders.items():  # a line per circuit; circuit.json: all
        c = load_circuit(folder)
        size = CircuitSize(
            nodes=c.n_nodes,
            edges=c.n_edges,
            reached=c.reached_target,
            sufficiency=c.sufficiency["loss"],
            necessity=c.necessity["loss"],
            trials=sum(t.get("state") == "COMPLETE" for t in c.trials),
            path=str(folder),
        )
        # A circuit read from a larger search counts at this budget, the same on every side.
        size = size_within(size, cfg.budget)
        out.setdefault(key, {}).setdefault(task, {})[target] = size
        if target not in todo.get((key, task), []):
            took = "reused"
        elif len(todo[key, task]) > 1:
            took = f"{seconds[key, task]:.0f} s with {len(todo[key, task])} targets"
        else:
            took = f"{seconds[key, task]:.0f} s"
        log(
            f"{key} {task} target {target:g}: {size.nodes} nodes, {size.edges} edges, "
            f"{'meets' if size.reached else 'MISSES'} the target ({took})"
        )
    return out


def _prune_circuits(
    final: Path,
    task: str,
    folders: dict[float, Path],
    cfg: PruneConfig,
    device: str,
    mean_windows: int,
    study: Path,
) -> float:
    """Prune one model's circuits for one task at each target into its folder (`prune_grid`'s
    unit of work, run in a worker process with --jobs); the seconds it took."""
    start = time.perf_counter()
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    prune_model_targets(
        final,
        task,
        folders,
        cfg,
        device=device,
        mean_windows=mean_windows,
        overwrite=True,
        study=study,
        log=_silent,  # prune_grid prints one line per circuit
    )
    return time.perf_counter() - start


def _silent(_: str) -> None:
    """A log that prints nothing (module-level: a worker process unpickles it)."""


def _pruned_with(folder: Path, cfg: PruneConfig) -> bool:
    """`folder` holds a circuit pruned with `cfg` (the budget may have been larger)."""
    if not (folder / CIRCUIT_FILE).is_file():
        return False
    saved = dict(load_circuit(folder).config)
    want = cfg.to_dict()
    budget = saved.pop("budget", 0)
    want.pop("budget")
    return saved == want and budget >= cfg.budget


# -- reports ------------------------------------------------------------------------------------


def fmt(x: float | int | None, digits: int = 1) -> str:
    """How every number is written in a table: integers as they are, floats with `digits`
    decimals. The JSON stores the same rounded values (`rnd`), so the two agree exactly."""
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def rnd(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; imported here, not at the top, so that
    the benchmarks' other steps run without matplotlib (the `plot` extra) installed."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError(
            "the plot needs matplotlib: pip install -e '.[plot]' (the dev extra has it)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def write_report(
    out: Path, stem: str, title: str, markdown: str, png: bytes, results: dict[str, Any]
) -> list[Path]:
    """OUT/STEM.md, .png, .json and .html (the markdown as HTML with the PNG inline: one
    self-contained file), each written atomically. Returns the paths."""
    paths = [out / f"{stem}{ext}" for ext in (".png", ".json", ".md", ".html")]
    atomic_write_bytes(paths[0], png)
    write_json(paths[1], results)
    atomic_write_text(paths[2], markdown)
    atomic_write_text(paths[3], _html(title, markdown, png))
    return paths


def _html(title: str, markdown: str, png: bytes) -> str:
    """The report's markdown (headings, tables, paragraphs: all it uses) as HTML, with the
    plot embedded as a data URI so the file stands alone."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rest = table
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest
            )
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            body.append(f"<table><tr>{cells}</tr>{rows}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):  # the |---| separator
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    image = base64.b64encode(png).decode()
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>\n"
        f"<img alt='plot' src='data:image/png;base64,{image}'>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))
