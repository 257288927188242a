"""The training commands, train and bridge, whose flags are the library's training configs
(dataclasses that tyro turns into a parser), and what each one runs. The configs are
torch-free, and so is this module: `--help` and `--print-config` import no torch (a fraction
of a second, not the seconds torch takes); the trainer (`train`, torchrun's `launch`) is
imported only to run. `sparse_tf.cli.main` imports this module only to run one of them (the
other commands are in `tools`)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

import tyro

from sparse_tf.bridges.config import BridgeConfig
from sparse_tf.bridges.train_config import BridgedTrainConfig
from sparse_tf.cli import Interrupted, UsageError
from sparse_tf.cli.common import (
    CONFIG_FILE_FLAGS,
    ConfigFileArgs,
    print_config,
    tyro_cli,
)
from sparse_tf.cli.tools import TARGET_MISSED_STATUS  # noqa: F401 - re-exported
from sparse_tf.config import ConfigError
from sparse_tf.config_files import overlay, read_toml
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import RUN_FILE
from sparse_tf.presets import DEFAULT_PRESET, PRESETS, preset
from sparse_tf.training.config import (
    FOLDER_FLAGS,
    RunOptions,
    TrainConfig,
    TrainingStopped,
    saved_config,
)

TRAIN_FILE_EXCLUDE = {**CONFIG_FILE_FLAGS, **FOLDER_FLAGS}
"""What a training config file may not set (and --print-config does not write): the config
file flags, --resume and --overwrite."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainArgs(ConfigFileArgs):
    """Train a weight-sparse GPT (or its dense twin) and export it to OUT/final."""

    preset: str = DEFAULT_PRESET
    """Starting config of a new run; --config's file overrides it (and may name it: preset =
    "NAME"), every other flag overrides both. See the list above. With --resume the run's own
    saved config is the starting point instead."""
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
    starting config is the preset's, or with --resume the saved one of the run in --out, with
    --config's file laid over it; --out defaults to runs/PRESET (runs/PRESET-bridged for
    `sparse-tf bridge`). The file may name the preset and --out too (the flags win)."""

    preset: str | None = None
    out: str | None = None
    resume: bool = False
    model: _GivenWidths = _GivenWidths()
    config: str | None = None

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
        start, _ = tyro_cli(cls, prog=prog, args=argv, return_unknown_args=True, add_help=False)
        return start

    def defaults(self, *, bridged: bool) -> TrainArgs:
        """The defaults of the full parse: the starting config and the run folder, with the
        config file laid over them."""
        data = read_toml(self.config) if self.config is not None else {}
        name = self.preset or DEFAULT_PRESET
        if self.preset is None and not self.resume and "preset" in data:
            name = self._file_string(data, "preset")
            if name not in PRESETS:
                raise ConfigError(
                    f"{self.config}: preset: {name!r} is not a preset; choose from "
                    f"{sorted(PRESETS)}"
                )
        out = self.out or f"runs/{name}{'-bridged' if bridged else ''}"
        if self.out is None and "out" in data:
            out = self._file_string(data, "out")
        config_type = BridgedTrainConfig if bridged else TrainConfig
        base = saved_config(Path(out), config_type) if self.resume else None
        if base is None:
            base = preset(name)
            if bridged:
                base = BridgedTrainConfig.bridging(base, BridgeConfig())
        args_type = BridgeArgs if bridged else TrainArgs
        default = args_type(preset=name, config=base, run=RunOptions(out=out))
        if self.config is None:
            return default
        model = data.get("model")
        if isinstance(model, dict) and "d_model" in model and "d_mlp" not in model:
            # As with --model.d-model: the file's width gets d_mlp = 4 · d_model, not the
            # starting config's d_mlp (a number, resolved when the preset was built).
            data = {**data, "model": {**model, "d_mlp": "None"}}
        fields = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
        values = overlay(args_type, fields, data, self.config, exclude=TRAIN_FILE_EXCLUDE)
        return args_type(**values)

    def _file_string(self, data: dict[str, object], key: str) -> str:
        value = data[key]
        if not isinstance(value, str):
            raise ConfigError(f"{self.config}: {key}: expected str (got {value!r})")
        return value

    def resolve(self, args: TrainArgs) -> TrainConfig:
        """The config to train from the full parse: d_mlp follows a given --model.d-model
        unless --model.d-mlp is given too (GPTConfig resolves d_mlp = 4 · d_model when built,
        so the starting config's d_mlp is a number: re-derived here, `--model.d-model 256`
        alone gets d_mlp 1024). A bridged run needs its dense model (not to print its
        config)."""
        config = args.config
        if self.model.d_model is not None and self.model.d_mlp is None:
            model = dataclasses.replace(config.model, d_mlp=None)  # type: ignore[type-var]
            config = dataclasses.replace(config, model=model)
        if args.print_config:
            return config
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
        return config


def train_command(argv: list[str]) -> None:
    _train(argv, bridged=False)


def bridge_command(argv: list[str]) -> None:
    """`sparse-tf train` with bridges to the dense GPT-2 of `--dense DIR`; new runs go to
    runs/PRESET-bridged unless --out says otherwise."""
    _train(argv, bridged=True)


def parse_train(argv: list[str], *, bridged: bool) -> tuple[TrainArgs, TrainConfig]:
    """A training command line: its options and the config to train (`TrainStart` first: it
    chooses the defaults of every other flag, from the preset or the saved run and the
    config file)."""
    prog = "sparse-tf bridge" if bridged else "sparse-tf train"
    start = TrainStart.parse(argv, prog)
    default = start.defaults(bridged=bridged)
    presets = "\n".join(f"  {n:<18} {desc}" for n, (desc, _) in PRESETS.items())
    args = tyro_cli(
        type(default),
        prog=prog,
        description=f"{type(default).__doc__}\n\npresets:\n{presets}",
        args=argv,
        default=default,
        # The model's flags are those of the preset's model (GPTConfig or GPT2Config), not a
        # choice between them on the command line: the preset picks the model.
        config=(tyro.conf.AvoidSubcommands,),
    )
    return args, start.resolve(args)


def _train(argv: list[str], *, bridged: bool) -> None:
    """Parse a training command, print its config (--print-config) or train, and report
    errors rank by rank under torchrun."""
    prog = "sparse-tf bridge" if bridged else "sparse-tf train"
    args, config = parse_train(argv, bridged=bridged)
    if args.print_config:
        print_config(dataclasses.replace(args, config=config), prog, exclude=TRAIN_FILE_EXCLUDE)
        return
    # Torch from here on: only a run needs the trainer (the parse above imports none).
    from sparse_tf.parallel import launch
    from sparse_tf.training.loop import train

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
