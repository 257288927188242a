"""What every command's parsing shares: flag checks and tyro with one-line errors. Imports
nothing heavy (tyro only), so that a command's `--help` costs what its own flags need."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import tyro

from sparse_tf.cli import UsageError


def require(condition: bool, args: object, field: str, requirement: str) -> None:
    """The check of one flag, in its dataclass's `__post_init__`: a UsageError naming the flag
    and its value unless `condition` holds."""
    if not condition:
        flag = "--" + field.replace("_", "-")
        raise UsageError(f"{flag} {getattr(args, field)}: {requirement}")


def exclusive_task_flags(task: str | None, pairs: str | None, *, required: bool = False) -> None:
    """The check of --task and --pairs (a built-in task, or your own task's pairs file): not
    both, and with `required` one of them."""
    if task is not None and pairs is not None:
        raise UsageError(
            f"--task {task} and --pairs {pairs}: give one (--pairs is your own task; its name "
            "comes from the file)"
        )
    if required and task is None and pairs is None:
        raise UsageError("give --task NAME (a built-in task) or --pairs FILE.jsonl (your own)")


def require_json_target(json_path: str | None) -> None:
    """The check of a --json flag: a UsageError, before any work, unless it names a file in an
    existing folder."""
    if json_path is None:
        return
    path = Path(json_path)
    if path.is_dir():
        raise UsageError(f"--json {path}: is a folder; name a file")
    if not path.parent.is_dir():
        raise UsageError(f"--json {path}: the folder {path.parent} does not exist")


def tyro_cli(target: Any, **kwargs: Any) -> Any:
    """`tyro.cli`, with its boxed error message condensed to our one-line format."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            result = tyro.cli(target, **kwargs)
    except SystemExit as e:
        if e.code not in (0, None):
            raise UsageError(condense(captured.getvalue(), kwargs["prog"])) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())  # warnings, if any
    return result


def condense(box: str, prog: str) -> str:
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigFileArgs:
    """The config-file flags of the commands whose options describe an experiment (train,
    bridge, prune, data prepare, analyze, eval, perturb): their options dataclasses derive
    from this."""

    config_file: Annotated[str | None, tyro.conf.arg(name="config", metavar="FILE.toml")] = None
    """Take flag values from this TOML file: a top-level key for each top-level flag
    (max_steps = 2000), a table for each nested one ([model] with d_model = 256); "None" is
    None. Flags given here override it."""
    print_config: bool = False
    """Print the resolved config (defaults, file, flags) as TOML, the file --config reads, and
    exit without running."""


CONFIG_FILE_FLAGS = {
    "config_file": "a config file cannot name another one",
    "print_config": "a command-line flag (--print-config), not a config value",
}
"""The fields of `ConfigFileArgs`, never read from a file: field -> why."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ConfigFlag:
    config: str | None = None


def config_file_flag(argv: list[str], prog: str) -> str | None:
    """--config of a command line, parsed before the rest (the file gives the defaults of the
    other flags); tyro leaves the others (--help too) to the full parse."""
    flag, _ = tyro_cli(_ConfigFlag, prog=prog, args=argv, return_unknown_args=True, add_help=False)
    return flag.config


def file_default(
    cls: type,
    base: Mapping[str, Any],
    file: str,
    *,
    exclude: Mapping[str, str] = CONFIG_FILE_FLAGS,
) -> Any:
    """The default of the full parse of `cls` (the command's options dataclass): `file` laid
    over `base` (field -> value), as tyro's `default=`, so that flags override the file.

    It is built without `cls`'s own checks: they may need flags the command line gives (prune
    with the file's options and --task on the command line), and tyro builds the checked
    object from the defaults and the flags. A required field the file leaves out stays
    required (`tyro.MISSING`). The file's nested configs are built and checked here, with
    errors naming the file and the key."""
    from sparse_tf.config_files import overlay, read_toml

    values = overlay(cls, base, read_toml(file), file, exclude=exclude)
    default = object.__new__(cls)
    for f in dataclasses.fields(cls):
        object.__setattr__(default, f.name, values.get(f.name, tyro.MISSING))
    return default


def print_config(args: Any, prog: str, *, exclude: Mapping[str, str] = CONFIG_FILE_FLAGS) -> None:
    """--print-config: `args` as the TOML file that `prog --config` reads, on stdout."""
    from sparse_tf.config_files import to_toml

    header = (
        f"# {prog} --config FILE reads this; flags given with it override it.\n"
        '# TOML has no null: "None" is None.\n\n'
    )
    sys.stdout.write(to_toml(args, exclude=exclude, header=header))


def parse_with_config_file(
    cls: type, argv: list[str], prog: str, *, exclude: Mapping[str, str] = CONFIG_FILE_FLAGS
) -> Any | None:
    """The options of a command whose dataclass derives from `ConfigFileArgs`: its defaults,
    then --config's file, then the flags; None after --print-config has printed them (the
    command then does nothing else). Train and bridge, whose starting point is a preset or a
    saved run, build their defaults themselves (`cli.commands`)."""
    from sparse_tf.config_files import field_defaults

    file = config_file_flag(argv, prog)
    default = None
    if file is not None:
        default = file_default(cls, field_defaults(cls), file, exclude=exclude)
    args = tyro_cli(cls, prog=prog, args=argv, default=default)
    if args.print_config:
        print_config(args, prog, exclude=exclude)
        return None
    return args
