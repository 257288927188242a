"""What every command's parsing shares: flag checks and tyro with one-line errors. Imports
nothing heavy (tyro only), so that a command's `--help` costs what its own flags need."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

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
