"""The commands that work on trained models, runs, tasks and corpora: eval, perturb, tasks,
analyze, convert, calibrate, plot, describe, prune, data prepare. Those whose options describe
an experiment (eval, perturb, analyze, prune, data prepare) also take them from a TOML file
(--config, --print-config); the utilities (tasks, convert, calibrate, plot, describe) take a
few flags each. Their flags are plain values or torch-free configs (describe's GPTConfig and
SparsityConfig, prune's PruneConfig, data prepare's DataConfig), so their `--help` imports
neither torch nor the rest of the library: each command imports what it runs."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tyro

from sparse_tf.cli import Interrupted, UsageError
from sparse_tf.cli.common import (
    CONFIG_FILE_FLAGS,
    ConfigFileArgs,
    exclusive_task_flags,
    parse_with_config_file,
    require,
    require_json_target,
    tyro_cli,
)
from sparse_tf.data.config import DataConfig
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import CIRCUIT_FILE, TOKENIZER_FILE, VIZ_DATA_FILE
from sparse_tf.io import write_json
from sparse_tf.model_config import GPTConfig
from sparse_tf.pruning.config import PruneConfig
from sparse_tf.sparsity_config import SparsityConfig, abstopk_k
from sparse_tf.tasks.base import CHANCE_LOSS


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalArgs(ConfigFileArgs):
    """Score a trained model on the hand-built tasks (loss, accuracy, logit margin per task)
    and on its training corpus's validation split."""

    model: str
    """Model folder: a run's final/ or step-N/, or an export."""
    task: str | None = None
    """A task name (see sparse_tf.tasks.TASKS) or 'all' (the default, without --pairs)."""
    pairs: str | None = None
    """Your own task instead of a built-in one: a JSON-lines file of contrast pairs, as
    `sparse-tf tasks --out` writes (every candidate must be one token of the model's
    tokenizer). Not with --task."""
    n: int | None = None
    """Contrast pairs per task (each gives two prompts); default 100, with --pairs all the
    file's pairs of --split."""
    split: Literal["train", "val", "test"] = "test"
    """Which task split to draw the pairs from."""
    seed: int = 0
    """Seed of the pair generators (chooses nothing with --pairs)."""
    json: str | None = None
    """Also write the report to this JSON file."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    val_windows: int = 256
    """Validation windows for the model's val loss (0 skips it)."""
    batch_size: int = 32
    """Pairs per forward pass."""

    def __post_init__(self) -> None:
        exclusive_task_flags(self.task, self.pairs)
        require_json_target(self.json)


def eval_command(argv: list[str]) -> None:
    args = parse_with_config_file(EvalArgs, argv, "sparse-tf eval")
    if args is None:
        return
    # Imported after the parse: --help needs neither torch nor the library.
    from sparse_tf.evaluation import evaluate_model
    from sparse_tf.tasks import read_pairs_file

    report = evaluate_model(
        args.model,
        read_pairs_file(args.pairs) if args.pairs is not None else args.task or "all",
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
class PerturbArgs(ConfigFileArgs):
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
        require(self.k >= 1, self, "k", "must be at least 1")
        require(self.n >= 1, self, "n", "must be at least 1")
        if self.channels != "auto" and not all(
            c.strip().isdigit() for c in self.channels.split(",")
        ):
            raise UsageError(f"--channels {self.channels!r}: 'auto' or integers joined by commas")
        require_json_target(self.json)

    def channel_list(self) -> list[int] | None:
        """The --channels as indices; None for 'auto'."""
        return None if self.channels == "auto" else [int(c) for c in self.channels.split(",")]


def perturb_command(argv: list[str]) -> None:
    args = parse_with_config_file(PerturbArgs, argv, "sparse-tf perturb")
    if args is None:
        return
    # Imported after the parse: --help needs neither torch nor the library.
    from sparse_tf.bridges.perturb import perturb_folder

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
    """List the 20 hand-built tasks, print example pairs, or write pairs to JSON-lines files
    (what `sparse-tf eval --pairs` and `sparse-tf prune --pairs` read)."""

    task: str = "all"
    """A task name or 'all'."""
    show: int = 0
    """Print this many pairs of each selected task (the prompt, then ⟦target⟧ and the rest)."""
    out: str | None = None
    """Write --n pairs of each selected task to OUT/NAME.jsonl; or, when OUT ends in .jsonl,
    all of them to that one file."""
    n: int = 100
    """Pairs per task (and per split, with --split all) for --out."""
    split: Literal["train", "val", "test", "all"] = "test"
    """Which split to draw the pairs from; 'all': --n of each of train, val and test (a file
    `sparse-tf prune --pairs` can use: it needs all three)."""
    seed: int = 0
    """Seed of the pair generators."""

    def __post_init__(self) -> None:
        require(self.out is None or self.n >= 1, self, "n", "must be at least 1")


def tasks_command(argv: list[str]) -> None:
    args = tyro_cli(TasksArgs, prog="sparse-tf tasks", args=argv)
    # Imported after the parse: --help needs neither torch nor the library.
    from sparse_tf.tasks import SPLITS, TASKS, Split, get_task, save_pairs

    selected = list(TASKS.values()) if args.task == "all" else [get_task(args.task)]
    splits: tuple[Split, ...] = SPLITS if args.split == "all" else (args.split,)
    if not args.show and args.out is None:
        for t in selected:
            why = f" [not for circuit comparisons: {t.not_for_circuits}]"
            print(f"{t.name:<28} {t.summary}{why if t.not_for_circuits else ''}")
    for task, split in ((t, s) for t in selected for s in splits):
        for i, pair in enumerate(task.pairs(args.show, args.seed, split)):
            print(f"== {task.name} #{i} ({split} split, seed {args.seed}): {task.summary}")
            for label, ex, alt in (("a", pair.a, pair.b), ("b", pair.b, pair.a)):
                print(f"-- {label}: candidates {ex.target!r} (correct) vs {alt.target!r}")
                print(f"{ex.context}\u27e6{ex.target}\u27e7{ex.rest}".rstrip("\n"))
    if args.out is not None:
        out = Path(args.out)
        drawn = {
            t.name: [p for s in splits for p in t.pairs(args.n, args.seed, s)] for t in selected
        }
        if out.suffix == ".jsonl":
            save_pairs(out, [p for pairs in drawn.values() for p in pairs])
        else:
            out.mkdir(parents=True, exist_ok=True)
            for name, pairs in drawn.items():
                save_pairs(out / f"{name}.jsonl", pairs)
        which = "pairs of each split" if args.split == "all" else f"{args.split} pairs"
        print(f"wrote {args.n} {which} of {len(selected)} task(s) to {out}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalyzeArgs(ConfigFileArgs):
    """Options every analysis shares (and --config, --print-config: an analysis's options kept
    in a file, to re-run or vary it)."""

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
                require(value >= 1, self, field.name, "must be >= 1")
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
        require(0.0 < self.threshold <= 1.0, self, "threshold", "must be in (0, 1]")

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
        require(self.sae_l1 >= 0, self, "sae_l1", "must be >= 0")

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
        require(0.0 <= self.noise <= 1.0, self, "noise", "must be in [0, 1]")

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
    args = parse_with_config_file(cls, argv[1:], f"sparse-tf analyze {name}")
    if args is None:
        return
    try:
        _analyze(name, preset_name, args)
    except (KeyboardInterrupt, SparseTFError) as e:
        from sparse_tf.training import TrainingStopped  # loaded by then: it trained

        if isinstance(e, SparseTFError) and not isinstance(e, TrainingStopped):
            raise
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertArgs:
    """Convert a model folder between sparse_tf's layout and OpenAI's released circuit_sparsity
    layout (beeg_config.json + final_model.pt): exactly one of --from and --to. A circuit
    folder of `sparse-tf prune` (circuit.json) converts --to circuit-sparsity as OUT/viz_data.pt,
    whose circuit_data the official viewer reads."""

    model: Annotated[Path, tyro.conf.Positional]
    """The folder to convert: a model folder, or with --to a circuit folder too."""
    out: Path
    """Where to write the converted folder (must not exist)."""
    from_: Annotated[Literal["circuit-sparsity"] | None, tyro.conf.arg(name="from")] = None
    """MODEL is in this layout; OUT becomes a sparse_tf model folder."""
    to: Literal["circuit-sparsity"] | None = None
    """MODEL is a sparse_tf model folder; OUT gets this layout."""


def convert_command(argv: list[str]) -> None:
    args = tyro_cli(ConvertArgs, prog="sparse-tf convert", args=argv)
    # Imported after the parse: --help needs neither torch nor the library.
    from sparse_tf import official
    from sparse_tf.checkpoint import export_model, load_model
    from sparse_tf.pruning import load_circuit
    from sparse_tf.pruning.circuit_data import save_viz_data

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
        try:
            tokenizer = official.load_tokenizer(args.model)
        except official.OfficialFormatError as e:  # the model converts; tasks need a tokenizer
            print(f"sparse-tf convert: {e}", file=sys.stderr)
            tokenizer = None
        export_model(args.out, model, tokenizer, {"converted_from": str(args.model)})
    elif (args.model / CIRCUIT_FILE).is_file():
        circuit = load_circuit(args.model)
        save_viz_data(circuit, args.out)
        print(f"wrote {args.out / VIZ_DATA_FILE}: circuit_data of {circuit.n_nodes} nodes")
        return
    else:
        tokenizer = args.model / TOKENIZER_FILE
        official.save(load_model(args.model), args.out, tokenizer if tokenizer.is_file() else None)
    print(f"wrote {args.out}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlotArgs:
    """Draw a training run's curves from RUN_DIR/metrics.jsonl as PNG images: train and val loss
    vs step and vs tokens, the L0 schedule, the learning-rate schedule, tokens/s; and plots.html,
    one page with all of them embedded (no network needed). Needs the [plot] extra."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """The run's folder (the --out of `sparse-tf train`); it may still be training."""
    out: Annotated[Path | None, tyro.conf.arg(metavar="DIR")] = None
    """Where to write the images (default RUN_DIR/plots)."""


def plot_command(argv: list[str]) -> None:
    args = tyro_cli(PlotArgs, prog="sparse-tf plot", args=argv)
    # Imported after the parse: --help needs no matplotlib (and plotting needs no torch).
    from sparse_tf.plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)


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
        import torch  # not for --help

        if torch.device(self.device).type != "cuda" or not torch.cuda.is_available():
            raise SparseTFError(
                f"--device {self.device}: calibration times the GPU kernels; no GPU"
            )

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of the layers to measure: the preset's widths, or --d-model's with
        d_mlp = 4 · d_model unless --d-mlp is given."""
        from sparse_tf.kernels import crossovers
        from sparse_tf.presets import preset

        model = preset(self.preset).model
        d = self.d_model or model.d_model
        m = self.d_mlp or (4 * d if self.d_model else model.d_mlp)
        return crossovers.layer_shapes(d, m, model.d_head)


def calibrate_command(argv: list[str]) -> None:
    args = tyro_cli(CalibrateArgs, prog="sparse-tf calibrate", args=argv)
    # Imported after the parse: --help needs neither torch nor the library.
    import torch

    from sparse_tf.kernels import crossovers

    device = torch.device(args.device)
    command = "sparse-tf calibrate " + " ".join(argv)
    rows = crossovers.calibrate(
        device, args.layer_shapes(), command, args.tokens, args.densities, args.iters
    )
    name = crossovers.device_name(device)
    print(crossovers.calibration_table(name, rows))
    print(f"wrote {crossovers.cache_file(name)}")


def describe(model: GPTConfig, sparsity: SparsityConfig = SparsityConfig(l0=1 / 64)) -> None:
    """Print a model's shape, parameter counts and the L0 budget of every sparse matrix.

    Nothing is allocated (the model is built on the meta device), so paper-scale shapes are fine.
    """
    print(format_description(model, sparsity))


def describe_command(argv: list[str]) -> None:
    tyro_cli(describe, prog="sparse-tf describe", args=argv)


def format_description(cfg: GPTConfig, sparsity: SparsityConfig) -> str:
    import torch

    from sparse_tf.model import GPT
    from sparse_tf.sparsity import COLS, ROWS, kept_count

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
        f"at L0 {l0:g} (embeddings x"
        f"{'d_model/256' if sparsity.embed_mult is None else f'{sparsity.embed_mult:g}'}, "
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


TARGET_MISSED_STATUS = 3
"""The exit status of `sparse-tf prune` when the circuit misses the target loss (its files are
written all the same): not an error's 1, so that scripts can tell the two apart."""


PRUNE_FILE_EXCLUDE = {
    **CONFIG_FILE_FLAGS,
    "overwrite": "replaces the result in --out: a command-line flag (--overwrite), not a "
    "config value",
}
"""What a pruning config file may not set (and --print-config does not write)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneArgs(ConfigFileArgs):
    """Find the smallest circuit of a trained model for a task (learned node masks, mean
    ablation) and write circuit.json, circuit.html, loss_vs_k.png (with the [plot] extra),
    means.safetensors and scores.safetensors. Exit status 3 when the circuit misses the target
    loss (the summary's first line says so; the files are written all the same), 1 on an
    error."""

    model: str
    """Model folder: a run's final/ or step-N/, or an export."""
    task: str | None = None
    """A task name (see `sparse-tf tasks`); or give --pairs."""
    pairs: str | None = None
    """Your own task instead of a built-in one: a JSON-lines file of contrast pairs, as
    `sparse-tf tasks --out` writes; split into train/val/test as the built-in tasks, every
    candidate one token of the model's tokenizer. Not with --task."""
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
    targets: tuple[float, ...] = ()
    """Several target losses in one run, instead of --target-loss: each circuit in its own
    folder OUT/target-T (T as given). Each target has its own search, and gets the circuit a
    run at that target would, but a trial's masks are trained once for every target that
    draws the same trial (they do not depend on the target)."""

    def __post_init__(self) -> None:
        exclusive_task_flags(self.task, self.pairs, required=True)
        require(self.mean_windows >= 1, self, "mean_windows", "must be at least 1")
        if self.targets:
            require(
                self.config.target_loss == PruneConfig().target_loss,
                self.config,
                "target_loss",
                "give one target loss (--target-loss) or several (--targets), not both",
            )
            for target in self.targets:
                require(
                    0 < target < CHANCE_LOSS,
                    self,
                    "targets",
                    f"{target:g} is not in (0, {CHANCE_LOSS:.4f}): at chance loss or above, no "
                    "circuit is needed",
                )
            require(len(set(self.targets)) == len(self.targets), self, "targets", "a repeat")

    def outs(self) -> dict[float, Path]:
        """Target loss -> output folder."""
        if not self.targets:
            return {self.config.target_loss: Path(self.out)}
        return {t: Path(self.out) / f"target-{t:g}" for t in self.targets}


def prune_command(argv: list[str]) -> None:
    args = parse_with_config_file(PruneArgs, argv, "sparse-tf prune", exclude=PRUNE_FILE_EXCLUDE)
    if args is None:
        return
    from sparse_tf.pruning.run import prune_model_targets  # torch-heavy: only when used
    from sparse_tf.tasks import read_pairs_file

    task = read_pairs_file(args.pairs) if args.pairs is not None else args.task
    assert task is not None  # PruneArgs requires one of them
    outs = args.outs()
    try:
        results = prune_model_targets(
            args.model,
            task,
            outs,
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
    missed = [t for t, result in results.items() if not result.circuit.met_target]
    if missed:
        # The summary (stdout) began with "TARGET MISSED"; this line is for whoever reads
        # only stderr and the status.
        where = ", ".join(str(outs[t]) for t in missed)
        losses = " ".join(f"{t:g}" for t in missed)
        print(
            f"sparse-tf prune: the circuit misses the target loss {losses} (exit status "
            f"{TARGET_MISSED_STATUS}); its files are in {where}",
            file=sys.stderr,
        )
        sys.exit(TARGET_MISSED_STATUS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataPrepareArgs(ConfigFileArgs):
    """Tokenise a corpus once, with worker processes, into the token store that `sparse-tf
    train` reads (the tokenizer too); an interrupted prepare resumes where it stopped."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    vocab_size: int = 2048
    """The model's vocabulary (--model.vocab-size of the training run): the BPE's size."""
    workers: int | None = None
    """Tokenising processes (default: every core this process may use)."""


def data_command(argv: list[str]) -> None:
    if not argv or argv[0] not in ("prepare", "-h", "--help"):
        raise UsageError("usage: sparse-tf data prepare --data.source SOURCE [--workers N] ...")
    argv = argv[argv[0] == "prepare" :]
    args = parse_with_config_file(DataPrepareArgs, argv, "sparse-tf data prepare")
    if args is None:
        return
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    from sparse_tf.data.pipeline import corpus_summary, prepare_tokens  # only to run
    from sparse_tf.tasks import task_tokens

    start = time.monotonic()
    corpus, tok, shards = prepare_tokens(
        args.data,
        args.vocab_size,
        reserved_tokens=task_tokens(),
        workers=args.workers,
        progress="auto",
    )
    store = shards["train"].files[0].parent
    size = corpus_summary(corpus, shards["train"], shards["val"])["documents"]
    docs = f"{size:,} documents, " if size is not None else ""
    print(
        f"{args.data.source}: {docs}{len(shards['train']):,} train + {len(shards['val']):,} "
        "val tokens "
        f"(vocabulary {tok.get_vocab_size()}, corpus digest {corpus.digest[:12]}) in {store}; "
        f"{time.monotonic() - start:.1f} s"
    )
