"""The `sparse-tf` commands: their flags (dataclasses that tyro turns into a parser) and what
each one runs. `sparse_tf.cli.main` imports this module only to run a command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import tyro

from sparse_tf.bridges.bridge import BridgeConfig
from sparse_tf.bridges.objective import BridgedTrainConfig
from sparse_tf.bridges.perturb import perturb_folder
from sparse_tf.cli import Interrupted, UsageError
from sparse_tf.data.pipeline import DataConfig
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import RUN_FILE, TOKENIZER_FILE
from sparse_tf.io import write_json
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.parallel import launch
from sparse_tf.presets import DEFAULT_PRESET, PRESETS, preset
from sparse_tf.pruning.search import PruneConfig
from sparse_tf.sparsity import COLS, ROWS, SparsityConfig, abstopk_k, kept_count
from sparse_tf.training import RunOptions, TrainConfig, TrainingStopped, train
from sparse_tf.training.run_folder import saved_config


def _require(condition: bool, args: object, field: str, requirement: str) -> None:
    """The check of one flag, in its dataclass's `__post_init__`: a UsageError naming the flag
    and its value unless `condition` holds."""
    if not condition:
        flag = "--" + field.replace("_", "-")
        raise UsageError(f"{flag} {getattr(args, field)}: {requirement}")


def _require_json_target(json_path: str | None) -> None:
    """The check of a --json flag: a UsageError, before any work, unless it names a file in an
    existing folder."""
    if json_path is None:
        return
    path = Path(json_path)
    if path.is_dir():
        raise UsageError(f"--json {path}: is a folder; name a file")
    if not path.parent.is_dir():
        raise UsageError(f"--json {path}: the folder {path.parent} does not exist")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """Train a weight-sparse GPT (or its dense twin) and export it to OUT/final."""

    preset: str = DEFAULT_PRESET
    """Starting config of a new run; every other flag overrides it. See the list above. With
    --resume the run's own saved config is the starting point instead."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")]
    run: Annotated[RunOptions, tyro.conf.arg(name="")]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeArgs(TrainArgs):
    """Train a weight-sparse GPT with bridges to a dense GPT-2 and export it to OUT/final."""

    config: Annotated[BridgedTrainConfig, tyro.conf.arg(name="")]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GivenWidths:
    """--model.d-model and --model.d-mlp, as text: whether they are given is what counts
    here (the full parse reads the numbers)."""

    d_model: str | None = None
    d_mlp: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainStart:
    """The training flags that choose the other flags' defaults, parsed before them: the
    starting config is the preset's, or with --resume the saved one of the run in --out, and
    --out defaults to runs/PRESET (runs/PRESET-bridged for `sparse-tf bridge`)."""

    preset: str | None = None
    out: str | None = None
    resume: bool = False
    model: _GivenWidths = _GivenWidths()

    def __post_init__(self) -> None:
        if self.resume and self.preset is not None:
            raise UsageError(
                "--preset starts new runs; --resume continues with the run's own config"
            )
        if self.preset is not None and self.preset not in PRESETS:
            preset(self.preset)  # raises, naming the choices

    @classmethod
    def parse(cls, argv: list[str], prog: str) -> TrainStart:
        """These flags of a training command line; tyro leaves the others (--help too) to
        the full parse."""
        start, _ = _tyro_cli(cls, prog=prog, args=argv, return_unknown_args=True, add_help=False)
        return start

    def defaults(self, *, bridged: bool) -> TrainArgs:
        """The defaults of the full parse: the starting config and the run folder."""
        name = self.preset or DEFAULT_PRESET
        out = self.out or f"runs/{name}{'-bridged' if bridged else ''}"
        config_type = BridgedTrainConfig if bridged else TrainConfig
        base = saved_config(Path(out), config_type) if self.resume else None
        if base is None:
            base = preset(name)
            if bridged:
                base = BridgedTrainConfig.bridging(base, BridgeConfig())
        args_type = BridgeArgs if bridged else TrainArgs
        return args_type(preset=name, config=base, run=RunOptions(out=out))

    def resolve(self, args: TrainArgs) -> TrainConfig:
        """The config to train from the full parse: d_mlp follows a given --model.d-model
        unless --model.d-mlp is given too (GPTConfig resolves d_mlp = 4 · d_model when built,
        so the starting config's d_mlp is a number: re-derived here, `--model.d-model 256`
        alone gets d_mlp 1024). A bridged run needs its dense model."""
        config = args.config
        if isinstance(config, BridgedTrainConfig) and config.bridge.dense is None:
            if self.resume:
                raise UsageError(
                    f"--resume: {args.run.out} holds a run without bridges; continue it with "
                    "sparse-tf train --resume"
                )
            raise UsageError(
                "--dense DIR is required: the dense GPT-2 folder to bridge to (one trained "
                "here: sparse-tf train --preset gpt2-tiny-cpu --out DIR)"
            )
        if self.model.d_model is not None and self.model.d_mlp is None:
            model = dataclasses.replace(config.model, d_mlp=None)  # type: ignore[type-var]
            config = dataclasses.replace(config, model=model)
        return config


def train_command(argv: list[str]) -> None:
    _train(argv, bridged=False)


def bridge_command(argv: list[str]) -> None:
    """`sparse-tf train` with bridges to the dense GPT-2 of `--dense DIR`; new runs go to
    runs/PRESET-bridged unless --out says otherwise."""
    _train(argv, bridged=True)


def _train(argv: list[str], *, bridged: bool) -> None:
    """Parse a training command (`TrainStart` first: it chooses the defaults of every other
    flag), train, and report errors rank by rank under torchrun."""
    prog = "sparse-tf bridge" if bridged else "sparse-tf train"
    start = TrainStart.parse(argv, prog)
    default = start.defaults(bridged=bridged)
    presets = "\n".join(f"  {n:<18} {desc}" for n, (desc, _) in PRESETS.items())
    args = _tyro_cli(
        type(default),
        prog=prog,
        description=f"{type(default).__doc__}\n\npresets:\n{presets}",
        args=argv,
        default=default,
        # The model's flags are those of the preset's model (GPTConfig or GPT2Config), not a
        # choice between them on the command line: the preset picks the model.
        config=(tyro.conf.AvoidSubcommands,),
    )
    config = start.resolve(args)
    world = launch.world_from_env()
    if not world.distributed:
        try:
            train(config, args.run)
        except (TrainingStopped, KeyboardInterrupt) as e:
            raise _train_interrupted(e, prog, argv, Path(args.run.out)) from None
        return
    # Under torchrun: every rank reports its own error (torchrun may stop rank 0 before it
    # prints when another rank fails first); all ranks leave the process group together and
    # exit without interpreter teardown (gloo can abort there).
    code = 0
    who = "" if world.main else f" (rank {world.rank})"
    try:
        train(config, args.run)
        launch.end(world)
    except TrainingStopped as e:
        stop = _train_interrupted(e, prog, argv, Path(args.run.out))
        if world.main:
            again = f"{shlex.join(stop.resume or [])} (under torchrun, as before)"
            print(f"{prog}: {stop}\nresume with: {again}", file=sys.stderr)
        code = stop.status
    except SparseTFError as e:
        print(f"{prog}{who}: error: {e}", file=sys.stderr)
        code = 1
    except RuntimeError as e:
        if not launch.lost_peer(e):
            raise
        # Another rank died (torchrun then stops this one too): one line, not a traceback.
        first = str(e).strip().splitlines()[0][:200]
        print(
            f"{prog}: error: rank {world.rank} lost another rank ({first})",
            file=sys.stderr,
        )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train_interrupted(
    e: TrainingStopped | KeyboardInterrupt, prog: str, argv: list[str], out: Path
) -> Interrupted:
    """Ctrl-C or SIGTERM during a training command, and the command that continues it: with
    --resume once the run folder holds the run (its own config is used then, so no other flag
    is needed), else the same command again."""
    resume = [*prog.split(), "--out", str(out), "--resume"]
    if isinstance(e, TrainingStopped):
        status = 128 + signal.Signals[e.signal].value if e.signal else 130
        message = f"stopped by {e.signal or 'a signal to another rank'} after step {e.step}"
        return Interrupted(f"{message}; checkpoint {e.checkpoint} is complete", resume, status)
    if not (out / RUN_FILE).is_file():
        resume = [*prog.split(), *argv]  # stopped before the run began: nothing to resume
    return Interrupted("interrupted", resume)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalArgs:
    """Score a trained model on the hand-built tasks (loss, accuracy, logit margin per task)
    and on its training corpus's validation split."""

    model: str
    """Model folder: a run's final/ or step-N/, or an export."""
    task: str = "all"
    """A task name (see sparse_tf.tasks.TASKS) or 'all'."""
    n: int = 100
    """Contrast pairs per task (each gives two prompts)."""
    split: Literal["train", "val", "test"] = "test"
    """Which task split to draw the pairs from."""
    seed: int = 0
    """Seed of the pair generators."""
    json: str | None = None
    """Also write the report to this JSON file."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    val_windows: int = 256
    """Validation windows for the model's val loss (0 skips it)."""
    batch_size: int = 32
    """Pairs per forward pass."""

    def __post_init__(self) -> None:
        _require_json_target(self.json)


def eval_command(argv: list[str]) -> None:
    from sparse_tf.evaluation import evaluate_model  # loads the task catalog only when used

    args = _tyro_cli(EvalArgs, prog="sparse-tf eval", args=argv)
    report = evaluate_model(
        args.model,
        args.task,
        n=args.n,
        seed=args.seed,
        split=args.split,
        device=args.device,
        val_windows=args.val_windows,
        pairs_per_batch=args.batch_size,
    )
    print(report.table())
    if args.json:
        write_json(Path(args.json), report.to_dict())


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerturbArgs:
    """Edit a bridged sparse model's residual at a site, decode the edit into the dense
    GPT-2 through the bridge, and compare both models' task logit differences."""

    model: str
    """A `sparse-tf bridge` run's final/ folder (the sparse model and its bridges)."""
    dense: str | None = None
    """The dense GPT-2 folder; default: the one the bridges were trained against."""
    task: str = "single_double_quote"
    site: str = "L1.attn_in"
    """Sparse-model site: L{i}.attn_in, L{i}.mlp_in or final."""
    channels: str = "auto"
    """Comma-separated residual channels, or 'auto': the --k channels that separate the
    task's two classes most at the site (on train-split pairs)."""
    k: int = 4
    mode: Literal["zero", "scale", "set", "add", "flip"] = "flip"
    value: float = 0.0
    """Of 'scale', 'set' and 'add'."""
    positions: Literal["last", "all"] = "last"
    n: int = 64
    """Contrast pairs (test split)."""
    seed: int = 0
    device: str = "auto"
    json: str | None = None
    """Also write the result to this JSON file."""

    def __post_init__(self) -> None:
        _require(self.k >= 1, self, "k", "must be at least 1")
        _require(self.n >= 1, self, "n", "must be at least 1")
        if self.channels != "auto" and not all(
            c.strip().isdigit() for c in self.channels.split(",")
        ):
            raise UsageError(f"--channels {self.channels!r}: 'auto' or integers joined by commas")
        _require_json_target(self.json)

    def channel_list(self) -> list[int] | None:
        """The --channels as indices; None for 'auto'."""
        return None if self.channels == "auto" else [int(c) for c in self.channels.split(",")]


def perturb_command(argv: list[str]) -> None:
    args = _tyro_cli(PerturbArgs, prog="sparse-tf perturb", args=argv)
    try:
        result = perturb_folder(
            args.model,
            args.task,
            args.site,
            args.channel_list(),
            dense=args.dense,
            k=args.k,
            mode=args.mode,
            value=args.value,
            positions=args.positions,
            n_pairs=args.n,
            seed=args.seed,
            device=args.device,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(result.table())
    if args.json:
        write_json(Path(args.json), dataclasses.asdict(result))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TasksArgs:
    """List the 20 hand-built tasks, print example pairs, or write pairs to JSON-lines files."""

    task: str = "all"
    """A task name or 'all'."""
    show: int = 0
    """Print this many pairs of each selected task (the prompt, then ⟦target⟧ and the rest)."""
    out: str | None = None
    """Write --n pairs of each selected task to OUT/NAME.jsonl."""
    n: int = 100
    """Pairs per task for --out."""
    split: Literal["train", "val", "test"] = "test"
    """Which split to draw the pairs from."""
    seed: int = 0
    """Seed of the pair generators."""

    def __post_init__(self) -> None:
        _require(self.out is None or self.n >= 1, self, "n", "must be at least 1")


def tasks_command(argv: list[str]) -> None:
    from sparse_tf.tasks import TASKS, get_task, save_pairs  # the catalog only when used

    args = _tyro_cli(TasksArgs, prog="sparse-tf tasks", args=argv)
    selected = list(TASKS.values()) if args.task == "all" else [get_task(args.task)]
    if not args.show and args.out is None:
        for t in selected:
            why = f" [not for circuit comparisons: {t.not_for_circuits}]"
            print(f"{t.name:<28} {t.summary}{why if t.not_for_circuits else ''}")
    for task in selected:
        for i, pair in enumerate(task.pairs(args.show, args.seed, args.split)):
            print(f"== {task.name} #{i} ({args.split} split, seed {args.seed}): {task.summary}")
            for label, ex, alt in (("a", pair.a, pair.b), ("b", pair.b, pair.a)):
                print(f"-- {label}: candidates {ex.target!r} (correct) vs {alt.target!r}")
                print(f"{ex.context}\u27e6{ex.target}\u27e7{ex.rest}".rstrip("\n"))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for task in selected:
            save_pairs(out / f"{task.name}.jsonl", task.pairs(args.n, args.seed, args.split))
        print(f"wrote {args.n} {args.split} pairs of {len(selected)} task(s) to {out}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneArgs:
    """Find the smallest circuit of a trained model for a task (learned node masks, mean
    ablation) and write circuit.json, circuit.html, means.safetensors and scores.safetensors."""

    model: str
    """Model folder: a run's final/ or step-N/, or an export."""
    task: str
    """A task name (see `sparse-tf tasks`)."""
    out: str
    """Output folder (written when complete; an earlier result is replaced with --overwrite)."""
    config: Annotated[PruneConfig, tyro.conf.arg(name="")] = PruneConfig()
    means: str | None = None
    """Ablation means (means.safetensors of an earlier run) instead of computing them."""
    mean_windows: int = 256
    """Training windows the ablation means are taken over."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    overwrite: bool = False
    """Replace an earlier pruning result in --out."""
    study: str | None = None
    """SQLite file of the search's Optuna study (created if missing): rerun the same command to
    resume after a kill, or start several at once to search in parallel; --budget counts the
    study's completed trials. Default: a study in memory."""

    def __post_init__(self) -> None:
        _require(self.mean_windows >= 1, self, "mean_windows", "must be at least 1")


def prune_command(argv: list[str]) -> None:
    from sparse_tf.pruning.run import prune_model  # torch-heavy search code only when used

    args = _tyro_cli(PruneArgs, prog="sparse-tf prune", args=argv)
    try:
        prune_model(
            args.model,
            args.task,
            args.out,
            args.config,
            device=args.device,
            means_file=args.means,
            mean_windows=args.mean_windows,
            overwrite=args.overwrite,
            study=args.study,
        )
    except KeyboardInterrupt:
        if args.study is None:  # a study in memory: nothing is left to continue
            message = "interrupted (without --study, the search starts again)"
            raise Interrupted(message, None) from None
        raise Interrupted(
            f"interrupted; the study {args.study} keeps its completed trials",
            ["sparse-tf", "prune", *argv],
        ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalyzeArgs:
    """Options every analysis shares."""

    out: str | None = None
    """Folder of the trained models (OUT/models/KIND-seedN) and of report.txt / report.json;
    default runs/analyze-NAME."""
    models: tuple[str, ...] = ()
    """Analyse these model folders instead of training the analysis's own models."""
    kinds: tuple[Literal["dense", "sparse"], ...] = ("dense", "sparse")
    """Which models to train: 'dense' (the paper's) and/or 'sparse' (weight-sparse, AbsTopK)."""
    seeds: int = 2
    """Models of each kind (seeds 0, 1, ...); a finished model of the same config is reused."""
    steps: int | None = None
    """Training steps (default: the analysis preset's)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    overwrite: bool = False
    """Retrain models whose folder holds a run of another config."""
    seed: int = 999
    """Seed of the analysis's own data (the models' training data is fixed)."""
    compares_models: ClassVar[bool] = False
    """Whether the analysis needs two or more models."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # counts (seeds, steps, sequences, ...) are >= 1
            value = getattr(self, field.name)
            if type(value) is int and field.name != "seed":
                _require(value >= 1, self, field.name, "must be >= 1")
        if self.compares_models and (len(self.models) == 1 or (not self.models and self.seeds < 2)):
            name = type(self).__name__.removesuffix("Args").lower()
            raise UsageError(
                f"the {name} analysis compares models: give --seeds >= 2 or 2+ --models"
            )
        if not self.models and not self.kinds:
            raise UsageError("--kinds: name dense and/or sparse (or give --models)")

    def run(self, models: list[Any]) -> Any:
        """The analysis's report on `models` (the library's study function, with these
        options)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, kw_only=True)
class AceArgs(AnalyzeArgs):
    """ACE (algorithmic cores) on 1-layer models of the 4-state Markov chain: core rank,
    keep/remove accuracy, fitted dynamics vs the chain's eigenvalues, two seeds compared."""

    threshold: float = 0.999
    """Energy threshold of the core rank (the paper's for this experiment)."""
    sequences: int = 3000
    """Fresh chain sequences of 32 states to analyse."""
    jacobian_samples: int = 128
    """Activations the readout's Jacobian Gram is averaged over."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 < self.threshold <= 1.0, self, "threshold", "must be in (0, 1]")

    def run(self, models: list[Any]) -> Any:
        from sparse_tf.analysis.studies.ace_markov import run_ace

        return run_ace(models, self.sequences, self.threshold, self.jacobian_samples, self.seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotationArgs(AnalyzeArgs):
    """Procrustes rotation between independently trained Dyck-3 models (dense pairs and
    weight-sparse pairs) at every residual site: held-out EV, nulls, Haar tests, distance to
    a signed permutation, SAE transfer."""

    fit_windows: int = 256
    """Windows of 64 tokens the rotation and the SAE are fitted on."""
    test_windows: int = 128
    """Held-out windows everything is scored on."""
    sae_steps: int = 3000
    sae_expansion: int = 8
    sae_l1: float = 1e-2

    compares_models: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.sae_l1 >= 0, self, "sae_l1", "must be >= 0")

    def run(self, models: list[Any]) -> Any:
        from sparse_tf.analysis.sae import SAEConfig
        from sparse_tf.analysis.studies.rotation_dyck import run_rotation

        sae = SAEConfig(expansion=self.sae_expansion, l1=self.sae_l1, steps=self.sae_steps)
        return run_rotation(models, self.fit_windows, self.test_windows, sae, self.seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FactoredArgs(AnalyzeArgs):
    """Factored vs joint belief geometry of models trained on the 5-factor process: dims at
    variance thresholds vs 10 / ~138, belief regression, vary-one subspaces and overlaps."""

    seeds: int = 1
    noise: float = 0.0
    """Train and analyse on the process with noise ε (process:factored-epsX)."""
    sequences: int = 2000
    """Fresh sequences of 8 tokens for the dimensions and the regression."""
    frozen: int = 10
    """Vary-one: frozen draws per factor."""
    batch: int = 200
    """Vary-one: sequences per frozen draw."""
    untrained: bool = True
    """Also analyse each model's initialisation (same config and seed, no training)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 <= self.noise <= 1.0, self, "noise", "must be in [0, 1]")

    def run(self, models: list[Any]) -> Any:
        from sparse_tf.analysis.studies.factored import run_factored

        return run_factored(
            models, self.noise, self.sequences, self.frozen, self.batch, self.seed, self.untrained
        )


ANALYSES: dict[str, tuple[type[AnalyzeArgs], str, str]] = {
    "ace": (AceArgs, "ace-markov", "algorithmic cores of 1-layer Markov-chain models"),
    "rotation": (RotationArgs, "rotation-dyck", "rotation between Dyck-3 models, dense vs sparse"),
    "factored": (FactoredArgs, "factored-process", "factored belief geometry, 5-factor process"),
}


def analyze_command(argv: list[str]) -> None:
    usage = "usage: sparse-tf analyze {" + ",".join(ANALYSES) + "} [--help] ..."
    if not argv or argv[0] in ("-h", "--help"):
        lines = [usage, "", "analyses:"]
        lines += [f"  {name:<10} {desc}" for name, (_, _, desc) in ANALYSES.items()]
        print("\n".join(lines))
        return
    name = argv[0]
    if name not in ANALYSES:
        raise UsageError(f"unknown analysis {name!r}; choose from {list(ANALYSES)}")
    cls, preset_name, _ = ANALYSES[name]
    args = _tyro_cli(cls, prog=f"sparse-tf analyze {name}", args=argv[1:])
    try:
        _analyze(name, preset_name, args)
    except (TrainingStopped, KeyboardInterrupt):
        # Finished models are reused and an interrupted one resumes: the same command again,
        # without --overwrite (which would train the finished ones again).
        again = ["sparse-tf", "analyze", *(a for a in argv if a != "--overwrite")]
        raise Interrupted("interrupted", again) from None


def _analyze(name: str, preset_name: str, args: AnalyzeArgs) -> None:
    from sparse_tf.analysis.studies import common  # scipy (the [analysis] extra) only when used

    noise = getattr(args, "noise", 0.0)
    out = Path(args.out) if args.out else common.default_folder(name, noise)
    models = common.analysed_models(
        preset_name,
        out,
        given=args.models,
        kinds=args.kinds,
        seeds=args.seeds,
        steps=args.steps,
        device=args.device,
        overwrite=args.overwrite,
        noise=noise,
    )
    try:
        report = args.run(models)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(report.table())
    common.save_study(out, name, report, models, dataclasses.asdict(args))
    print(f"\nwrote {out / 'report.txt'} and {out / 'report.json'}")


def describe(model: GPTConfig, sparsity: SparsityConfig = SparsityConfig(l0=1 / 64)) -> None:
    """Print a model's shape, parameter counts and the L0 budget of every sparse matrix.

    Nothing is allocated (the model is built on the meta device), so paper-scale shapes are fine.
    """
    print(format_description(model, sparsity))


def describe_command(argv: list[str]) -> None:
    _tyro_cli(describe, prog="sparse-tf describe", args=argv)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertArgs:
    """Convert a model folder between sparse_tf's layout and OpenAI's released circuit_sparsity
    layout (beeg_config.json + final_model.pt): exactly one of --from and --to."""

    model: Annotated[Path, tyro.conf.Positional]
    """The folder to convert."""
    out: Path
    """Where to write the converted folder (must not exist)."""
    from_: Annotated[Literal["circuit-sparsity"] | None, tyro.conf.arg(name="from")] = None
    """MODEL is in this layout; OUT becomes a sparse_tf model folder."""
    to: Literal["circuit-sparsity"] | None = None
    """MODEL is a sparse_tf model folder; OUT gets this layout."""


def convert_command(argv: list[str]) -> None:
    from sparse_tf import official
    from sparse_tf.checkpoint import export_model, load_model

    args = _tyro_cli(ConvertArgs, prog="sparse-tf convert", args=argv)
    if (args.from_ is None) == (args.to is None):
        raise SparseTFError("sparse-tf convert: give exactly one of --from and --to")
    if args.out.exists():
        raise SparseTFError(f"--out {args.out}: exists; converting never replaces a folder")
    if args.from_ is not None:
        if not official.is_official(args.model):
            raise SparseTFError(
                f"{args.model}: not a circuit_sparsity folder (needs beeg_config.json and "
                "final_model.pt)"
            )
        model = official.load(args.model)
        export_model(args.out, model, None, {"converted_from": str(args.model)})
    else:
        tokenizer = args.model / TOKENIZER_FILE
        official.save(load_model(args.model), args.out, tokenizer if tokenizer.is_file() else None)
    print(f"wrote {args.out}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrateArgs:
    """Measure when the sparse matmul beats cuBLAS on this GPU for a model's layer shapes, into
    this machine's cache (used from then on instead of the shipped table of this GPU model)."""

    preset: str = "paper-d1024"
    """Whose layer shapes to measure (qkv, attention-out, MLP-in, MLP-out)."""
    d_model: int | None = None
    """Measure this width instead of the preset's (d_mlp = 4 · d_model unless given)."""
    d_mlp: int | None = None
    device: str = "cuda"
    tokens: tuple[int, ...] = (4096, 16384)
    """Token counts (rows of the activation) to measure."""
    densities: tuple[float, ...] = tuple(1 / 2**i for i in range(4, 11))
    iters: int = 10
    """Timed repetitions per product (medians)."""

    def __post_init__(self) -> None:
        if torch.device(self.device).type != "cuda" or not torch.cuda.is_available():
            raise SparseTFError(
                f"--device {self.device}: calibration times the GPU kernels; no GPU"
            )

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of the layers to measure: the preset's widths, or --d-model's with
        d_mlp = 4 · d_model unless --d-mlp is given."""
        from sparse_tf.kernels import crossovers

        model = preset(self.preset).model
        d = self.d_model or model.d_model
        m = self.d_mlp or (4 * d if self.d_model else model.d_mlp)
        return crossovers.layer_shapes(d, m, model.d_head)


def calibrate_command(argv: list[str]) -> None:
    from sparse_tf.kernels import crossovers

    args = _tyro_cli(CalibrateArgs, prog="sparse-tf calibrate", args=argv)
    device = torch.device(args.device)
    command = "sparse-tf calibrate " + " ".join(argv)
    rows = crossovers.calibrate(
        device, args.layer_shapes(), command, args.tokens, args.densities, args.iters
    )
    name = crossovers.device_name(device)
    print(crossovers.calibration_table(name, rows))
    print(f"wrote {crossovers.cache_file(name)}")


def _tyro_cli(target: Any, **kwargs: Any) -> Any:
    """`tyro.cli`, with its boxed error message condensed to our one-line format."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            result = tyro.cli(target, **kwargs)
    except SystemExit as e:
        if e.code not in (0, None):
            raise UsageError(_condense(captured.getvalue(), kwargs["prog"])) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())  # warnings, if any
    return result


def _condense(box: str, prog: str) -> str:
    """A tyro error box on one line: its message, the flags it lists, and its suggestions
    (title, borders, help text and the help hint dropped). Handles rich's Unicode boxes and
    its plain-text fallback (dashed rules) alike."""
    sections: list[list[str]] = [[]]
    for raw in box.splitlines()[1:]:  # the first line is the title (in the top border)
        text = raw.strip().strip("│|╭╰╮╯+").strip()
        if text and set(text) <= {"─", "-", "═", "+"}:
            sections.append([])
        elif text:
            sections[-1].append(text)
    sections = [section for section in sections if section]

    def flags(lines: list[str]) -> str:
        return ", ".join(line.split()[0] for line in lines if line.startswith("--"))

    if not sections:
        return f"invalid arguments (see {prog} --help)"
    first = sections[0]
    head = []
    for line in first:
        if line.startswith("--"):
            break
        head.append(line)
    message = " ".join(head)
    if listed := flags(first[len(head) :]):
        message += f" {listed}"
    for section in sections[1:]:
        if section[0].startswith("Perhaps you meant") and (hint := flags(section)):
            message += f"; perhaps you meant {hint}"
    return f"{message} (see {prog} --help)"


def format_description(cfg: GPTConfig, sparsity: SparsityConfig) -> str:
    with torch.device("meta"):
        model = GPT(cfg)
    weights = model.sparse_weights()
    n_total = sum(p.numel() for p in model.parameters())
    n_sparse = sum(w.param.numel() for w in weights)
    acts = "off"
    if cfg.afrac is not None:
        k_model, k_mlp = abstopk_k(cfg.afrac, cfg.d_model), abstopk_k(cfg.afrac, cfg.d_mlp)
        acts = f"{cfg.afrac} (k = {k_model} of d_model, {k_model} of q/k/v, {k_mlp} of d_mlp)"
    axis = {ROWS: "rows", COLS: "columns", None: "-"}
    l0 = sparsity.l0
    lines = [
        f"GPT: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads x {cfg.d_head}, "
        f"d_mlp {cfg.d_mlp}, vocab {cfg.vocab_size}, n_ctx {cfg.n_ctx}",
        f"AbsTopK: {acts}; bigram {'on' if cfg.bigram else 'off'}; "
        f"attention sinks {'on' if cfg.attn_sink else 'off'}; "
        f"positional embedding {'on' if cfg.pos_emb else 'off'}",
        f"parameters: {n_total:,} ({n_sparse:,} in {len(weights)} sparse matrices, "
        f"{n_total - n_sparse:,} dense: biases, norms, sinks, bigram)",
        "",
        f"at L0 {l0:g} (embeddings x{sparsity.embed_mult:g}, "
        f">= {sparsity.min_per_neuron} nonzeros per neuron):",
        f"{'matrix':<32} {'shape':>13} {'entries':>12} {'kept':>10} {'density':>8}  neurons",
    ]
    kept_total = 0
    for w in weights:
        kept = kept_count(w, l0, sparsity)
        kept_total += kept
        shape = " x ".join(str(s) for s in w.param.shape)
        lines.append(
            f"{w.name:<32} {shape:>13} {w.param.numel():>12,} {kept:>10,} "
            f"{kept / w.param.numel():>8.4f}  {axis[w.neuron_dim]}"
        )
    lines.append(f"{'total':<32} {'':>13} {n_sparse:>12,} {kept_total:>10,}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataPrepareArgs:
    """Tokenise a corpus once, with worker processes, into the token store that `sparse-tf
    train` reads (the tokenizer too); an interrupted prepare resumes where it stopped."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    vocab_size: int = 2048
    """The model's vocabulary (--model.vocab-size of the training run): the BPE's size."""
    workers: int | None = None
    """Tokenising processes (default: every core this process may use)."""


def data_command(argv: list[str]) -> None:
    from sparse_tf.data.pipeline import prepare_tokens
    from sparse_tf.tasks import task_tokens

    if not argv or argv[0] not in ("prepare", "-h", "--help"):
        raise UsageError("usage: sparse-tf data prepare --data.source SOURCE [--workers N] ...")
    prog = "sparse-tf data prepare"
    args = _tyro_cli(DataPrepareArgs, prog=prog, args=argv[argv[0] == "prepare" :])
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    start = time.monotonic()
    corpus, tok, shards = prepare_tokens(
        args.data,
        args.vocab_size,
        reserved_tokens=task_tokens(),
        workers=args.workers,
        progress="auto",
    )
    store = shards["train"].files[0].parent
    docs = f"{corpus.size:,} documents, " if corpus.size is not None else ""
    print(
        f"{args.data.source}: {docs}{len(shards['train']):,} train + {len(shards['val']):,} "
        "val tokens "
        f"(vocabulary {tok.get_vocab_size()}, corpus digest {corpus.digest[:12]}) in {store}; "
        f"{time.monotonic() - start:.1f} s"
    )
