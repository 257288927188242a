"""Random pieces of Python for the task templates: names, numbers, words and surrounding code.

The surrounding code (imports, a function or method header, a few plain statements) varies the
prompts' length and content so that no task can be passed by memorising a string. It contains
no string literals, brackets, comparisons or block keywords, so it never carries the cue a task
asks about; every task's decision depends on its own last lines only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# Names that are common in Python and short: good variable names for the templates.
NOUNS = (
    "items", "values", "names", "data", "result", "total", "count", "index", "key", "value",
    "line", "lines", "path", "text", "word", "words", "node", "nodes", "item", "entry",
    "record", "records", "row", "rows", "user", "users", "name", "size", "chunk", "parts",
    "token", "tokens", "queue", "stack", "cache", "config", "options", "state", "buffer",
    "offset", "limit", "score", "scores", "width", "height", "level", "depth", "step", "batch",
)  # fmt: skip
VERBS = (
    "load", "save", "parse", "build", "read", "write", "check", "update", "find", "make",
    "get", "set", "run", "process", "handle", "format", "compute", "collect", "merge", "split",
)  # fmt: skip
CLASSES = (
    "Parser", "Config", "Node", "Widget", "Cache", "Client", "Record", "Handler", "Buffer",
    "Point", "Task", "Job", "Reader", "Writer", "Session", "Model", "Table", "Request",
)  # fmt: skip
WORDS = (
    "the", "a", "file", "value", "total", "count", "result", "error", "loading", "saving",
    "done", "failed", "found", "missing", "invalid", "user", "data", "name", "size", "items",
    "starting", "processing", "could", "not", "read", "write", "open", "with", "for", "in",
    "new", "old", "empty", "list", "key", "line", "path", "is", "was", "all", "of", "and",
)  # fmt: skip
_IMPORTS = (
    "import os", "import sys", "import re", "import json", "import math", "import logging",
    "import time", "import random", "from pathlib import Path", "from collections import deque",
    "from typing import Any", "import itertools", "import functools", "import subprocess",
)  # fmt: skip
_METHODS = ("strip", "lower", "upper", "copy", "pop", "clear", "sort", "reverse", "keys")
_FUNCS = ("len", "sum", "max", "min", "abs", "int", "float", "str", "sorted", "list", "tuple")


def pick(rng: random.Random, pool: Sequence[str], avoid: Sequence[str] = ()) -> str:
    """One element of `pool` that is not in `avoid`."""
    return rng.choice([p for p in pool if p not in avoid])


def number(rng: random.Random) -> str:
    return str(rng.choice((0, 1, 2, 3, 5, 8, 10, 16, 32, 42, 64, 100, 128, 255, 1000)))


def func_name(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"


def words(rng: random.Random, lo: int, hi: int) -> str:
    """Letters and spaces only, e.g. `Could not read the file`."""
    out = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    return out.capitalize() if rng.random() < 0.5 else out


def preamble(rng: random.Random) -> str:
    """0-3 module-level lines (imports, a constant), then a blank line if any."""
    lines = rng.sample(_IMPORTS, rng.randint(0, 2))
    if rng.random() < 0.3:
        lines.append(f"{rng.choice(NOUNS).upper()} = {number(rng)}")
    return "".join(line + "\n" for line in lines) + ("\n" if lines else "")


def expression(rng: random.Random, avoid: Sequence[str] = ()) -> str:
    """A right-hand side: a number, a call, a method call or a product; reads none of `avoid`."""
    source = pick(rng, NOUNS, avoid)
    kind = rng.randrange(5)
    if kind == 0:
        return number(rng)
    if kind == 1:
        return f"{rng.choice(_FUNCS)}({source})"
    if kind == 2:
        return f"{source}.{rng.choice(_METHODS)}()"
    if kind == 3:
        return f"{source} * {number(rng)}"
    return f"{func_name(rng)}({source})"


def statement(rng: random.Random, avoid: Sequence[str] = ()) -> str:
    """One plain statement without indentation or newline, touching none of `avoid`."""
    kind = rng.randrange(4)
    if kind == 0:
        return f"{pick(rng, NOUNS, avoid)} += {number(rng)}"
    if kind == 1:
        return f"{func_name(rng)}({pick(rng, NOUNS, avoid)})"
    return f"{pick(rng, NOUNS, avoid)} = {expression(rng, avoid)}"


def statements(rng: random.Random, indent: str, lo: int, hi: int, avoid: Sequence[str] = ()) -> str:
    """`lo`-`hi` statements at `indent`, each ending with a newline."""
    return "".join(f"{indent}{statement(rng, avoid)}\n" for _ in range(rng.randint(lo, hi)))


def scope(
    rng: random.Random, params: Sequence[str] = (), module: bool = True, avoid: Sequence[str] = ()
) -> tuple[str, str]:
    """Surrounding code that ends where a statement may begin: `(text, indent)`.

    At module level (if `module`), in a function, or in a method, with 0-2 statements before
    the end; the function or method takes `params`. Statements assign none of `avoid`.
    """
    text = preamble(rng)
    kind = rng.randrange(0 if module else 1, 3)  # 0 module, 1 function, 2 method
    args = ", ".join(params)
    if kind == 0:
        indent = ""
    elif kind == 1:
        text += f"def {func_name(rng)}({args}):\n"
        indent = "    "
    else:
        text += f"class {rng.choice(CLASSES)}:\n"
        text += f"    def {func_name(rng)}(self{', ' if args else ''}{args}):\n"
        indent = "        "
    return text + statements(rng, indent, 0 if kind == 0 else 1, 2, avoid), indent
