"""The `sparse-tf` command line (the only module that parses argv).

    sparse-tf train [--preset tiny-cpu] [--out DIR] [--max-steps N] [--seed N] [--resume]
                    [--overwrite] [--wandb offline|online|disabled] [--device auto|cpu|cuda]
                    [--model.d-model 256 --sparsity.l0 0.03125 --optim.lr 0.01 ...]
    sparse-tf describe --model.vocab-size 2048 --model.n-ctx 256 --model.n-layer 8 \\
        --model.d-model 1024 --sparsity.l0 0.015625
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Annotated

import torch
import tyro

from sparse_tf.errors import SparseTFError
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.presets import DEFAULT_PRESET, PRESETS, preset
from sparse_tf.sparsity import COLS, ROWS, SparsityConfig, abstopk_k, kept_count
from sparse_tf.training import RunOptions, TrainConfig, train


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """Train a weight-sparse GPT (or its dense twin) and export it to OUT/final."""

    preset: str = DEFAULT_PRESET
    """Starting config; every other flag overrides it. See the list above."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")]
    run: Annotated[RunOptions, tyro.conf.arg(name="")]


def train_command(argv: list[str]) -> None:
    name = _preset_name(argv)
    base = preset(name)
    presets = "\n".join(f"  {n:<18} {desc}" for n, (desc, _) in PRESETS.items())
    args = tyro.cli(
        TrainArgs,
        prog="sparse-tf train",
        description=f"Train a weight-sparse GPT and export it to OUT/final.\n\npresets:\n{presets}",
        args=argv,
        default=TrainArgs(preset=name, config=base, run=RunOptions(out=f"runs/{name}")),
    )
    config = args.config
    if not any(a.split("=", 1)[0] == "--model.d-mlp" for a in argv):
        # GPTConfig resolves d_mlp = 4 · d_model when built, so the preset's default is a
        # number; re-derive it so that `--model.d-model 256` alone gets d_mlp 1024.
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, d_mlp=None))
    train(config, args.run)


def _preset_name(argv: list[str]) -> str:
    """The value of --preset (the defaults of every other flag depend on it)."""
    for i, arg in enumerate(argv):
        if arg == "--preset":
            if i + 1 >= len(argv):
                raise SparseTFError("--preset needs a value; choose from " + str(sorted(PRESETS)))
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return DEFAULT_PRESET


def describe(model: GPTConfig, sparsity: SparsityConfig = SparsityConfig(l0=1 / 64)) -> None:  # noqa: B008
    """Print a model's shape, parameter counts and the L0 budget of every sparse matrix.

    Nothing is allocated (the model is built on the meta device), so paper-scale shapes are fine.
    """
    print(format_description(model, sparsity))


def describe_command(argv: list[str]) -> None:
    tyro.cli(describe, prog="sparse-tf describe", args=argv)


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


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (train_command, "train a weight-sparse GPT (presets, resume, export)"),
    "describe": (describe_command, "print a model's shape and per-matrix L0 budget"),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sparse-tf` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: sparse-tf {" + ",".join(COMMANDS) + "} [--help] ..."
    if not argv or argv[0] in ("-h", "--help"):
        lines = [usage, "", "commands:"]
        lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
        print("\n".join(lines))
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(
            f"{usage}\nsparse-tf: error: unknown command {name!r}; choose from {list(COMMANDS)}"
        )
    try:
        COMMANDS[name][0](rest)
    except SparseTFError as e:
        sys.exit(f"sparse-tf {name}: error: {e}")
    except KeyboardInterrupt:
        # Training handles Ctrl-C itself (checkpoint, then exit); this is any other moment.
        print(f"sparse-tf {name}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
