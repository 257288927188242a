"""The `sparse-tf` command line (the only package that parses argv).

    sparse-tf train [--preset tiny-cpu] [--out DIR] [--max-steps N] [--seed N] [--resume]
                    [--overwrite] [--wandb auto|offline|online|disabled] [--device auto|cpu|cuda]
                    [--model.d-model 256 --sparsity.l0 0.03125 --optim.lr 0.01 ...]
    sparse-tf bridge --dense DIR [--preset tiny-cpu] [--out DIR] [any train flag]
    sparse-tf perturb --model runs/tiny-cpu-bridged/final [--task single_double_quote]
                      [--site L1.attn_in] [--channels auto|3,17] [--mode flip|zero|scale|...]
    sparse-tf eval --model runs/tiny-cpu/final [--task NAME|all | --pairs FILE.jsonl] [--n 100]
                   [--json FILE]
    sparse-tf tasks [--task NAME] [--show 2] [--out DIR|FILE.jsonl --n 1000 --split test|all]
    sparse-tf prune --model runs/tiny-cpu/final --task single_double_quote --out DIR
                    [--target-loss 0.15] [--budget 4] [--steps 500] [--means FILE]
    sparse-tf prune --model runs/tiny-cpu/final --pairs my_pairs.jsonl --out DIR   (your task;
                    exit status 3 when the circuit misses the target)
    sparse-tf analyze {ace,rotation,factored} [--out DIR] [--seeds 2] [--kinds dense sparse]
                      [--steps N] [--models DIR DIR ...] [--device auto]
    sparse-tf plot RUN_DIR [--out DIR]   (default RUN_DIR/plots: PNGs and plots.html)
    sparse-tf describe --model.vocab-size 2048 --model.n-ctx 256 --model.n-layer 8 \\
        --model.d-model 1024 --sparsity.l0 0.015625
    sparse-tf calibrate [--preset paper-d1024] [--d-model 2048] [--tokens 4096 16384]
    sparse-tf convert --from circuit-sparsity DIR --out DIR   (or: DIR --to circuit-sparsity)
    sparse-tf convert CIRCUIT_DIR --to circuit-sparsity --out DIR   (viz_data.pt: circuit_data)

This module is the entry point and imports nothing heavy: `sparse-tf --help` lists the
commands without importing torch, and a command's module (`commands` or `tools`) is imported
only to run it.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys

from sparse_tf.errors import SparseTFError


class UsageError(SparseTFError):
    """A flag the command line parser rejected (exit status 2, as argparse)."""


class Interrupted(Exception):
    """A command stopped by Ctrl-C (or SIGTERM): not an error. `resume` is the command line
    that continues it (None: there is nothing to continue); the exit status is 128 + the
    signal's number, as a shell reports a process killed by it (130 for Ctrl-C)."""

    def __init__(self, message: str, resume: list[str] | None, status: int = 130) -> None:
        super().__init__(message)
        self.resume, self.status = resume, status


COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("commands", "train a weight-sparse GPT (presets, resume, export)"),
    "data": ("tools", "prepare: tokenise a corpus into the store `train` reads, in parallel"),
    "bridge": ("commands", "train a sparse GPT with bridges to a dense HF GPT-2 (--dense)"),
    "perturb": ("tools", "edit a bridged sparse model's site; effect on the dense model"),
    "eval": ("tools", "score a trained model on the 20 hand-built tasks and its val split"),
    "tasks": ("tools", "list the hand-built tasks, show example pairs, export them"),
    "prune": ("tools", "find a task's minimal circuit; write circuit.json and circuit.html"),
    "analyze": ("tools", "ACE cores, rotation between models, factored subspaces"),
    "plot": ("tools", "draw a run's loss, L0, LR and tokens/s curves (PNG + one HTML page)"),
    "describe": ("tools", "print a model's shape and per-matrix L0 budget"),
    "calibrate": ("tools", "measure when the sparse matmul beats cuBLAS on this GPU"),
    "convert": ("tools", "to and from OpenAI's released circuit_sparsity model layout"),
}
"""Each command: the module of `sparse_tf.cli` whose NAME_command runs it (`commands` for those
whose flags are the training configs, `tools` for the rest), and its line in `--help`. Neither
module imports torch before it has parsed: every command's `--help` is fast."""


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
        print(usage, file=sys.stderr)
        print(
            f"sparse-tf: error: unknown command {name!r}; choose from {list(COMMANDS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        # Only the command's own module, which imports torch only after parsing (--help).
        module = importlib.import_module(f"sparse_tf.cli.{COMMANDS[name][0]}")
        getattr(module, f"{name}_command")(rest)
    except Interrupted as e:
        print(f"sparse-tf {name}: {e}", file=sys.stderr)
        if e.resume is not None:
            print(f"resume with: {shlex.join(e.resume)}", file=sys.stderr)
        sys.exit(e.status)
    except SparseTFError as e:
        print(f"sparse-tf {name}: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except BrokenPipeError:
        # The reader went away (`sparse-tf eval ... | head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as e:
        # The file system said no (disk full, read-only, permission, a file where a folder
        # should be): the path and the reason are the whole story. Every write is atomic, so
        # nothing half-written was left in place of a good file.
        if e.strerror is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"sparse-tf {name}: error: {where}{e.strerror}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Not an error. Commands that can be continued say how themselves (`Interrupted`).
        print(f"sparse-tf {name}: interrupted", file=sys.stderr)
        sys.exit(130)
