"""The 20 Python tasks of the paper (Gao et al. 2025, Table 1), in its order.

Each task is a generator of one random contrast pair (its docstring says what decides the next
token and which candidate strings were chosen) and the decision rule written as a function of
the prompt text. Candidates are shown as the default tokenizer's tokens: its pre-tokenizer
joins a punctuation run with the newlines after it (`")` + newline is one token) and a word
with one leading non-letter (`=None`, `.add`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from sparse_tf.tasks.base import Example, Pair, Task
from sparse_tf.tasks.code import (
    CLASSES,
    NOUNS,
    expression,
    func_name,
    number,
    preamble,
    scope,
    statement,
    statements,
    words,
)

TASKS: dict[str, Task] = {}

# Names that are candidates themselves (copied, swapped or tested), so each is a reserved token
# of the default tokenizer; all are single tokens of GPT-2's BPE too.
ATTRIBUTES = (
    "name", "value", "size", "path", "data", "key", "items", "count", "index", "label",
    "color", "width", "height", "parent", "title", "text", "mode", "level", "source",
    "target", "timeout", "config", "state", "result", "owner", "kind", "limit", "offset",
)  # fmt: skip
SWAP_NAMES = (
    "a", "b", "x", "y", "i", "j", "left", "right", "first", "second", "old", "new", "low",
    "high", "prev", "next", "src", "dst", "head", "tail", "start", "end",
)  # fmt: skip
CONDITION_NAMES = (
    "count", "size", "total", "index", "score", "level", "depth", "n", "x", "value", "limit",
    "offset", "width", "height", "attempts",
)  # fmt: skip


def task(
    name: str,
    summary: str,
    *,
    rule: Callable[[str], str],
    tokens: set[str],
    differ: str,
    max_regions: int = 1,
    not_for_circuits: str = "",
) -> Callable[[Callable[[random.Random], Pair]], Callable[[random.Random], Pair]]:
    """Register the decorated pair generator as task `name`."""

    def register(make: Callable[[random.Random], Pair]) -> Callable[[random.Random], Pair]:
        TASKS[name] = Task(
            name=name,
            summary=summary,
            make=make,
            rule=rule,
            tokens=frozenset(tokens),
            differ=differ,
            max_regions=max_regions,
            not_for_circuits=not_for_circuits,
        )
        return make

    return register


def _last_line(context: str) -> str:
    return context.rsplit("\n", 1)[-1]


def _head(context: str) -> str:
    """The last line without its indentation."""
    return _last_line(context).strip()


# 1 -----------------------------------------------------------------------------------------
_CALLS = (
    "print", "log.info", "logger.warning", "raise ValueError", "raise KeyError", "parser.error",
    "sys.stdout.write", "warnings.warn", "self.fail", "log.debug", "raise RuntimeError",
)  # fmt: skip


@task(
    "single_double_quote",
    "string opened with (' or (\" -- close with ') vs \")",
    rule=lambda c: '")' if c.rfind('("') > c.rfind("('") else "')",
    tokens={'")\n', "')\n"},
    differ=r"\([\"']",
)
def single_double_quote(rng: random.Random) -> Pair:
    """A call's string argument of random words: `print("Could not read the file` ->
    `")` (double-quoted, class a) vs `')` (single-quoted, class b). The paper opens with the
    `("` / `('` tokens; the closing token includes the newline that ends the line."""
    prefix, indent = scope(rng)
    call, text = rng.choice(_CALLS), words(rng, 1, 6)

    def member(quote: str) -> Example:
        return Example(f"{prefix}{indent}{call}({quote}{text}", f"{quote})", "\n")

    return Pair("single_double_quote", member('"'), member("'"))


# 2 -----------------------------------------------------------------------------------------
def _final_kwarg_rule(context: str) -> str:
    params = context[context.rindex("(") + 1 :].split(",")
    return "=" if any("=" in p for p in params) else ")"


@task(
    "final_kwarg",
    "whether the previous parameter of a def has a default -- =None vs ): newline",
    rule=_final_kwarg_rule,
    tokens={"=None", "):\n"},
    differ=r"(=\w+)?",
)
def final_kwarg(rng: random.Random) -> Pair:
    """`def fetch(url, timeout=30, retries` -> `=` (a default must follow a default: the
    token is `=None`) vs `def fetch(url, timeout, retries` -> `)` (the token is `):` plus the
    newline). Only the parameter before the last differs; 3-5 parameters, random defaults."""
    names = rng.sample(NOUNS, rng.randint(3, 5))
    default = rng.choice(("None", "True", "False", number(rng), number(rng)))
    method = rng.random() < 0.3
    indent = "    " if method else ""
    head = preamble(rng) + (f"class {rng.choice(CLASSES)}:\n" if method else "")
    head += f"{indent}def {func_name(rng)}({'self, ' if method else ''}"

    def member(with_default: bool) -> str:
        params = [*names[:-2], names[-2] + (f"={default}" if with_default else ""), names[-1]]
        return head + ", ".join(params)

    return Pair(
        "final_kwarg",
        Example(member(True), "=", "None):\n"),
        Example(member(False), ")", ":\n"),
    )


# 3, 4 --------------------------------------------------------------------------------------
def _set_or_string_rule(context: str) -> str:
    var = _head(context)
    return "." if re.search(rf"^\s*{var} = set\(\)$", context, re.M) else " +="


_SET_OR_STRING_DOC = """`{var} = set()` or `{var} = ""`, a few statements, a `for` loop
    (sometimes an `if` inside), and a line holding only the variable: `.add` (class a) vs
    ` +=` (class b). Only the initialisation differs. The decisive text of class a is the
    `.` of a method call; the default tokenizer makes `.add` one token."""


def _set_or_string(rng: random.Random, name: str, var: str) -> Pair:
    item, coll = rng.sample(("item", "x", "word", "ch", "key", "name", "line", "tag"), 2)
    coll += "s"
    prefix, indent = scope(rng, params=[coll], avoid=[var, item, coll])
    between = statements(rng, indent, 0, 2, avoid=[var, item, coll])
    loop = f"{indent}for {item} in {coll}:\n"
    inner = indent + "    "
    if rng.random() < 0.3:
        loop += f"{inner}if {item}:\n"
        inner += "    "

    def member(init: str) -> str:
        return f"{prefix}{indent}{var} = {init}\n{between}{loop}{inner}{var}"

    return Pair(
        name,
        Example(member("set()"), ".", f"add({item})\n"),
        Example(member('""'), " +=", f" {item}\n"),
    )


@task(
    "set_or_string",
    'variable initialised as set() or "" (names vary) -- .add vs +=',
    rule=_set_or_string_rule,
    tokens={".add", " +="},
    differ=r'set\(\)|""',
)
def set_or_string(rng: random.Random) -> Pair:
    var = rng.choice(("seen", "result", "out", "names", "tags", "keys", "chars", "acc", "text"))
    return _set_or_string(rng, "set_or_string", var)


@task(
    "set_or_string_fixedvarname",
    "the same with the variable always named current -- .add vs +=",
    rule=_set_or_string_rule,
    tokens={".add", " +="},
    differ=r'set\(\)|""',
)
def set_or_string_fixedvarname(rng: random.Random) -> Pair:
    return _set_or_string(rng, "set_or_string_fixedvarname", "current")


set_or_string.__doc__ = _SET_OR_STRING_DOC.format(var="seen")
set_or_string_fixedvarname.__doc__ = _SET_OR_STRING_DOC.format(var="current")


# 5 -----------------------------------------------------------------------------------------
@task(
    "class_init",
    "in __init__ with many self.x = x lines -- copy the right name after =",
    rule=lambda c: " " + re.findall(r"self\.(\w+) =$", c)[-1],
    tokens={" " + a for a in ATTRIBUTES},
    differ=r"\w+",
)
def class_init(rng: random.Random) -> Pair:
    """`def __init__(self, name, size, color, parent):` with `self.x = x` for the first few
    parameters, then `self.color =` -> ` color` (class a) vs `self.parent =` -> ` parent`
    (class b): two parameters not yet assigned. Names come from `ATTRIBUTES`."""
    params = rng.sample(ATTRIBUTES, rng.randint(3, 6))
    done = rng.randint(0, len(params) - 2)
    x, y = rng.sample(params[done:], 2)
    text = preamble(rng) + f"class {rng.choice(CLASSES)}:\n"
    text += f"    def __init__(self, {', '.join(params)}):\n"
    text += "".join(f"        self.{p} = {p}\n" for p in params[:done])

    def member(attr: str) -> Example:
        return Example(f"{text}        self.{attr} =", f" {attr}", "\n")

    return Pair("class_init", member(x), member(y))


# 6 -----------------------------------------------------------------------------------------
_OPENERS = ("open", "gzip.open", "bz2.open", "lzma.open", "tarfile.open", "zipfile.ZipFile")
_PATHS = ("path", "filename", "fname", "self.path", "args.input", "config_path", "src")
_HANDLES = ("f", "fh", "fp", "handle", "stream", "archive", "source")


@task(
    "with_as",
    "a file loaded in a with statement or by assignment -- ) before as vs ) newline",
    rule=lambda c: ")" if _head(c).startswith("with ") else ")\n",
    tokens={")", ")\n"},
    differ=r"with|\w+ =",
)
def with_as(rng: random.Random) -> Pair:
    """`with open(path` -> `)` then ` as f:` (class a) vs `f = open(path` -> `)` plus the
    newline that ends the assignment (class b). With GPT-2's pre-tokenizer the decision would
    be ` as` vs a newline after `)`; the default tokenizer joins `)` and the newline into one
    token, so the decision comes one token earlier, where the two lines first differ."""
    prefix, indent = scope(rng)
    opener, path, handle = rng.choice(_OPENERS), rng.choice(_PATHS), rng.choice(_HANDLES)
    return Pair(
        "with_as",
        Example(f"{prefix}{indent}with {opener}({path}", ")", f" as {handle}:\n"),
        Example(f"{prefix}{indent}{handle} = {opener}({path}", ")\n"),
    )


# 7 -----------------------------------------------------------------------------------------
@task(
    "bracket_brace",
    "first element of a dict literal or a list literal -- : vs ,",
    rule=lambda c: ":" if c.rfind("{") > c.rfind("[") else ",",
    tokens={":", ","},
    differ=r"\(?[{\[]",
)
def bracket_brace(rng: random.Random) -> Pair:
    """`data = {name` -> `:` (class a) vs `data = [name` -> `,` (class b); the first element
    is a name or a number, the literal is assigned, returned or passed to a call."""
    prefix, indent = scope(rng)
    var, other = rng.sample(NOUNS, 2)
    lead = rng.choice((f"{var} = ", "return ", f"{var} = {func_name(rng)}(", f"{func_name(rng)}("))
    if lead == "return " and not indent:
        lead = f"{var} = "
    first = rng.choice((rng.choice(NOUNS), number(rng)))
    close = ")" if lead.endswith("(") else ""
    return Pair(
        "bracket_brace",
        Example(f"{prefix}{indent}{lead}{{{first}", ":", f" {other}}}{close}\n"),
        Example(f"{prefix}{indent}{lead}[{first}", ",", f" {other}]{close}\n"),
    )


# 8 -----------------------------------------------------------------------------------------
_READ_WORDS = ("input", "in", "src", "source", "read", "load", "infile")
_WRITE_WORDS = ("output", "out", "dst", "target", "write", "save", "outfile")


def _with_open_rule(context: str) -> str:
    name = context[context.rindex("open(") + 5 :].split(",")[0]
    return "r" if set(name.split("_")) & set(_READ_WORDS) else "w"


@task(
    "with_open",
    "open() of a file named for reading or writing -- 'r' vs 'w'",
    rule=_with_open_rule,
    tokens={"r", "w"},
    differ=r"\w+",
)
def with_open(rng: random.Random) -> Pair:
    """`with open(input_path, '` -> `r` (class a) vs `with open(output_path, '` -> `w`
    (class b): the file's name says the direction (input/output, src/dst, source/target,
    read/write, load/save, in/out, infile/outfile). The quote before the mode is its own
    token, so the candidates are the letters `r` and `w`."""
    prefix, indent = scope(rng)
    i = rng.randrange(len(_READ_WORDS))
    suffixes = ("_path", "_file", "_name") + (("",) if _READ_WORDS[i] != "in" else ())  # `in`
    suffix = "" if _READ_WORDS[i] == "infile" else rng.choice(suffixes)  # is a keyword
    handle = rng.choice(_HANDLES)
    assign = rng.random() < 0.3

    def member(stem: str, mode: str) -> Example:
        name = stem + suffix
        if assign:
            return Example(f"{prefix}{indent}{handle} = open({name}, '", mode, "')\n")
        return Example(f"{prefix}{indent}with open({name}, '", mode, f"') as {handle}:\n")

    return Pair("with_open", member(_READ_WORDS[i], "r"), member(_WRITE_WORDS[i], "w"))


# 9 -----------------------------------------------------------------------------------------
@task(
    "bracket_counting",
    "nesting depth of a list literal over several rows -- ]] vs ]",
    rule=lambda c: "]" * (c.count("[") - c.count("]")),  # code before the literal is balanced
    tokens={"]]\n", "]\n"},
    differ=r"\[\[?",
)
def bracket_counting(rng: random.Random) -> Pair:
    """A list literal over 2-4 rows, its depth set on the first row and closed on the last:
    `grid = [[1, 2,` ... `x, 3` -> `]]` (class a, depth 2) vs `grid = [1, 2,` ... `x, 3` ->
    `]` (class b). Every row after the first is the same in both, so the depth must be carried
    across rows from where the brackets opened (the paper's analysis: a head sums the open
    brackets of the context). 1-3 elements (numbers and names) a row; the last line is closed,
    so the token includes the newline."""
    prefix, indent = scope(rng)
    var = rng.choice(("grid", "matrix", "rows", "data", "table", "board", "values", "pairs"))
    rows = [
        ", ".join(rng.choice((number(rng), rng.choice(NOUNS))) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.randint(2, 4))
    ]
    body = f",\n{indent}    ".join(rows)  # a hanging indent
    lead = "return " if indent and rng.random() < 0.3 else f"{var} = "
    return Pair(
        "bracket_counting",
        Example(f"{prefix}{indent}{lead}[[{body}", "]]", "\n"),
        Example(f"{prefix}{indent}{lead}[{body}", "]", "\n"),
    )


# 10 ----------------------------------------------------------------------------------------
@task(
    "for_while",
    "for vs while loop header -- in vs :",
    rule=lambda c: " in" if _head(c).startswith("for ") else ":",
    tokens={" in", ":\n"},
    differ=r"for|while",
)
def for_while(rng: random.Random) -> Pair:
    """`for node` -> ` in` (class a) vs `while node` -> `:` (class b; with the newline it
    is one token)."""
    prefix, indent = scope(rng)
    var = rng.choice(NOUNS)
    return Pair(
        "for_while",
        Example(f"{prefix}{indent}for {var}", " in", f" {var}s:\n"),
        Example(f"{prefix}{indent}while {var}", ":", "\n"),
    )


# 11 ----------------------------------------------------------------------------------------
def _else_elif_rule(context: str) -> str:
    if _head(context) == "else":
        return ":"
    return " " + re.findall(r"^\s*if (\w+)", context, re.M)[-1]


@task(
    "else_elif",
    "else vs elif after an if block -- : vs the condition's first token",
    rule=_else_elif_rule,
    tokens={":\n"} | {" " + n for n in CONDITION_NAMES},
    differ=r"else|elif",
    not_for_circuits=(
        "its prompts end on the keyword that decides (else vs elif), so the bigram table "
        "decides it with no circuit; evaluated, never pruned in comparisons"
    ),
)
def else_elif(rng: random.Random) -> Pair:
    """An `if count > 10:` block, then `else` -> `:` (class a) vs `elif` -> ` count`
    (class b): the condition of an `elif` starts with the variable the `if` tested. Names
    come from `CONDITION_NAMES`."""
    prefix, indent = scope(rng, module=rng.random() < 0.2)
    var = rng.choice(CONDITION_NAMES)
    op, other = rng.sample(("<", ">", "<=", ">=", "=="), 2)
    block = f"{indent}if {var} {op} {number(rng)}:\n"
    block += statements(rng, indent + "    ", 1, 2, avoid=[var])
    return Pair(
        "else_elif",
        Example(f"{prefix}{block}{indent}else", ":", "\n"),
        Example(f"{prefix}{block}{indent}elif", f" {var}", f" {other} {number(rng)}:\n"),
    )


# 12 ----------------------------------------------------------------------------------------
@task(
    "fstring_brace",
    'f-string or plain string in a print -- { (insert a variable) vs ", (pass it after)',
    rule=lambda c: " {" if c.rfind('(f"') > c.rfind('("') else '"',
    tokens={" {", '",'},
    differ=r"\(f?\"",
)
def fstring_brace(rng: random.Random) -> Pair:
    """A variable is computed, then `print(f"Total is` -> ` {` (class a: the f-string
    inserts it) vs `print("Total is` -> `"` (class b: the string closes and the variable
    follows as an argument; the token is `",`)."""
    var = rng.choice(NOUNS)
    prefix, indent = scope(rng, module=rng.random() < 0.3, avoid=[var])
    prefix += f"{indent}{var} = {expression(rng)}\n"
    call, text = rng.choice(("print", "log.info", "logger.debug", "print")), words(rng, 1, 4)
    return Pair(
        "fstring_brace",
        Example(f'{prefix}{indent}{call}(f"{text}', " {", f'{var}}}")\n'),
        Example(f'{prefix}{indent}{call}("{text}', '"', f", {var})\n"),
    )


# 13 ----------------------------------------------------------------------------------------
@task(
    "if_ternary",
    "if inside a ternary expression or as a statement -- else vs :",
    rule=lambda c: ":" if _head(c).startswith("if ") else " else",
    tokens={" else", ":\n"},
    differ=r"(\w+ = \w+ )?",
)
def if_ternary(rng: random.Random) -> Pair:
    """`value = count if count > limit` -> ` else` (class a) vs `if count > limit` -> `:`
    (class b, no colon in a ternary). The condition is a name, a comparison, `is None` or
    `not`."""
    prefix, indent = scope(rng)
    var, res, other = rng.sample(NOUNS, 3)
    cond = rng.choice(
        (var, f"not {var}", f"{var} is None", f"{var} > {number(rng)}", f"{var} == {other}")
    )
    return Pair(
        "if_ternary",
        Example(f"{prefix}{indent}{res} = {var} if {cond}", " else", f" {other}\n"),
        Example(f"{prefix}{indent}if {cond}", ":", "\n"),
    )


# 14 ----------------------------------------------------------------------------------------
@task(
    "var_swap",
    "x, y = y, x -- predict the swapped name",
    rule=lambda c: " " + re.findall(r"(\w+), \w+ = \w+,$", c)[-1],
    tokens={" " + n for n in SWAP_NAMES},
    differ=r"\w+",
    max_regions=3,
)
def var_swap(rng: random.Random) -> Pair:
    """Both names assigned, then `left, right = right,` -> ` left` (class a) vs
    `right, left = left,` -> ` right` (class b). Names come from `SWAP_NAMES`."""
    x, y = rng.sample(SWAP_NAMES, 2)
    prefix, indent = scope(rng, avoid=[x, y])
    prefix += f"{indent}{x} = {number(rng)}\n{indent}{y} = {number(rng)}\n"
    prefix += statements(rng, indent, 0, 1, avoid=[x, y])
    return Pair(
        "var_swap",
        Example(f"{prefix}{indent}{x}, {y} = {y},", f" {x}", "\n"),
        Example(f"{prefix}{indent}{y}, {x} = {x},", f" {y}", "\n"),
    )


# 15 ----------------------------------------------------------------------------------------
@task(
    "indent_for",
    "indentation of the first line after a for header -- 8 vs 12 spaces (and 4, 16)",
    rule=lambda c: " " * (len(_last_line(c[:-1])) - len(_last_line(c[:-1]).lstrip()) + 3),
    tokens={" " * 3, " " * 7, " " * 11, " " * 15},
    differ=r"\n *",
)
def indent_for(rng: random.Random) -> Pair:
    """An `if` block, then a `for` header either after it (class a) or inside it (class b,
    4 spaces deeper); the next token is the body's indentation. The pre-tokenizer gives the
    last space of an indentation to the word after it, so the candidates are runs of 3, 7,
    11 or 15 spaces (a body at 4, 8, 12 or 16)."""
    item, coll, var = rng.sample(NOUNS, 3)
    prefix, indent = scope(rng, params=[coll], avoid=[item, coll, var])
    block = f"{indent}if {var}:\n" + statements(rng, indent + "    ", 1, 2, avoid=[item, coll])
    body = statement(rng, avoid=[item, coll])

    def member(depth: str) -> Example:
        header = f"{prefix}{block}{depth}for {item} in {coll}:\n"
        return Example(header, depth + "   ", f" {body}\n")

    return Pair("indent_for", member(indent), member(indent + "    "))


# 16 ----------------------------------------------------------------------------------------
_LAMBDA_ARGS = ("item", "key", "value", "event", "node", "record", "row", "line", "x", "path")
_LAMBDA_NAMES = ("key_func", "handler", "transform", "sort_key", "check", "callback", "fn")


@task(
    "lambda_func",
    "x = lambda func vs def func -- : vs (",
    rule=lambda c: ":" if " lambda " in _last_line(c) else "(",
    tokens={":", "():\n"},
    differ=r"\w+ = lambda|def",
)
def lambda_func(rng: random.Random) -> Pair:
    """`key_func = lambda item` -> `:` (class a) vs `def item` -> `(` (class b). An opening
    parenthesis joins the name after it in one pre-token (`(self`), so the defined function
    takes no parameters and its token is `():` plus the newline."""
    prefix, indent = scope(rng)
    arg, name = rng.choice(_LAMBDA_ARGS), rng.choice(_LAMBDA_NAMES)
    body = rng.choice((f"{arg}.name", f"{arg} * 2", f"len({arg})", f"{arg} is None", "None"))
    return Pair(
        "lambda_func",
        Example(f"{prefix}{indent}{name} = lambda {arg}", ":", f" {body}\n"),
        Example(f"{prefix}{indent}def {arg}", "(", "):\n"),
    )


# 17 ----------------------------------------------------------------------------------------
@task(
    "if_equals",
    "if condition vs assignment -- == vs =",
    rule=lambda c: " ==" if _head(c).startswith("if ") else " =",
    tokens={" ==", " ="},
    differ=r"(if )?",
)
def if_equals(rng: random.Random) -> Pair:
    """`if count` -> ` ==` (class a) vs `count` at the start of a statement -> ` =`
    (class b). Always indented (in a function or method): at the start of a module-level line
    the name is a different token (`count`, not ` count`), and the bigram table would decide."""
    var = rng.choice(NOUNS)
    prefix, indent = scope(rng, module=False, avoid=[var])
    value = rng.choice((number(rng), "None", "True", "False", rng.choice(NOUNS)))
    return Pair(
        "if_equals",
        Example(f"{prefix}{indent}if {var}", " ==", f" {value}:\n"),
        Example(f"{prefix}{indent}{var}", " =", f" {value}\n"),
    )


# 18 ----------------------------------------------------------------------------------------
@task(
    "enumerate_range",
    "one or two loop variables -- enumerate vs range",
    rule=lambda c: " enumerate" if "," in _last_line(c) else " range",
    tokens={" enumerate", " range"},
    differ=r"(, \w+)?",
)
def enumerate_range(rng: random.Random) -> Pair:
    """`for i, item in` -> ` enumerate` (class a) vs `for i in` -> ` range` (class b)."""
    coll = rng.choice(NOUNS)
    prefix, indent = scope(rng, params=[coll])
    i = rng.choice(("i", "idx", "n", "j", "k", "pos", "index"))
    x = rng.choice(("item", "line", "row", "value", "name", "word", "entry", "node"))
    return Pair(
        "enumerate_range",
        Example(f"{prefix}{indent}for {i}, {x} in", " enumerate", f"({coll}):\n"),
        Example(f"{prefix}{indent}for {i} in", " range", f"(len({coll})):\n"),
    )


# 19 ----------------------------------------------------------------------------------------
@task(
    "var_if",
    "conditional vs declaration -- if x == True : vs x = True newline",
    rule=lambda c: ":" if _head(c).startswith("if ") else "\n",
    tokens={":\n", "\n"},
    differ=r"(if )?|==?",
    max_regions=2,
)
def var_if(rng: random.Random) -> Pair:
    """`if done == True` -> `:` (class a; with the newline one token) vs `done = True`
    -> the newline (class b). Values: True, False, None or a number."""
    var = rng.choice((*NOUNS, "done", "ok", "found", "ready", "valid"))
    prefix, indent = scope(rng, avoid=[var])
    value = rng.choice(("True", "False", "None", number(rng)))
    return Pair(
        "var_if",
        Example(f"{prefix}{indent}if {var} == {value}", ":", "\n"),
        Example(f"{prefix}{indent}{var} = {value}", "\n"),
    )


# 20 ----------------------------------------------------------------------------------------
@task(
    "while_return_true",
    "after while True vs return True -- : vs newline",
    rule=lambda c: ":" if _head(c).startswith("while ") else "\n",
    tokens={":\n", "\n"},
    differ=r"while|return",
)
def while_return_true(rng: random.Random) -> Pair:
    """Inside a function: `while True` -> `:` (class a; with the newline one token) vs
    `return True` -> the newline (class b)."""
    prefix, indent = scope(rng, module=False)
    return Pair(
        "while_return_true",
        Example(f"{prefix}{indent}while True", ":", "\n"),
        Example(f"{prefix}{indent}return True", "\n"),
    )
