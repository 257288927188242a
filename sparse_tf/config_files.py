"""TOML config files: a config written as TOML, and a TOML file laid over a config.

A file gives values for the fields a command's flags set, under the same names: a top-level
key for a top-level flag (`max_steps = 2000` is `--max-steps 2000`), a table for a nested
config (`[model]` with `d_model = 256` is `--model.d-model 256`). A dataclass field whose flags
tyro writes without its name (`tyro.conf.arg(name="")`, e.g. the training config and the run
options of `sparse-tf train`) is written and read without its name too: its fields are
top-level keys.

TOML has no null. A field that is None (unset, off) is written as the string "None", the
spelling of the flags (`--model.afrac None`), and "None" reads back as None wherever the field
may be None. Every field is written, so a written file reads back to the same config whatever
it is laid over (a preset, the defaults). A model table also names its model (`arch`, as
config.json does), so a file may switch, say, from the sparse GPT to the dense GPT-2.

Errors are one line naming the file and the dotted key (`run.toml: model.d_modle: unknown key
(did you mean d_model?)`), as ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from sparse_tf.config import ARCH_KEY, Config, ConfigError, coerce
from sparse_tf.errors import SparseTFError

NONE = "None"
"""How a None value is written (TOML has no null), as the flags spell it."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or malformed file is a ConfigError naming
    it (a syntax error also names the line and column)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # "Invalid value (at line 3, column 5)"
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def to_toml(*objs: Any, exclude: Collection[str] = (), header: str = "") -> str:
    """`objs` (dataclass instances) as one TOML document, their fields side by side: every
    field but the top-level ones in `exclude`; `header` (comment lines) first."""
    import tomli_w  # only where a file is written: `--help` need not load it

    table: dict[str, Any] = {}
    for obj in objs:
        table.update(toml_table(obj, exclude=exclude))
    return header + tomli_w.dumps(table)


def toml_table(obj: Any, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """`obj` (a dataclass instance) as the nested dict `to_toml` writes: fields flattened where
    their flags are, None as "None"."""
    table: dict[str, Any] = {}
    if isinstance(obj, Config):
        # A config's own to_dict: what config.json holds (a model config adds its arch).
        items = obj.to_dict().items()
    else:
        hints = typing.get_type_hints(type(obj), include_extras=True)
        items = []
        for f in _init_fields(type(obj)):
            value = getattr(obj, f.name)
            if _flattened(hints[f.name]) and dataclasses.is_dataclass(value):
                items += toml_table(value, exclude=exclude).items()
            else:
                items.append((f.name, toml_table(value) if _is_instance(value) else value))
    for key, value in items:
        if key not in exclude:
            table[key] = _toml_value(value)
    return table


def _toml_value(value: Any) -> Any:
    if value is None:
        return NONE
    if isinstance(value, Mapping):
        first = [ARCH_KEY] if ARCH_KEY in value else []  # which model, before its fields
        return {k: _toml_value(value[k]) for k in [*first, *(k for k in value if k not in first)]}
    if isinstance(value, (list, tuple)):
        return [_toml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def overlay(
    cls: type,
    base: Mapping[str, Any],
    data: Mapping[str, Any],
    source: str,
    *,
    exclude: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The field values of `cls` (a dataclass) with the file `data` laid over `base` (field
    name -> value; required fields may be absent). Nested configs are built, and so checked,
    here; `cls` itself is left to the caller (its own checks may need values the flags give
    later). `exclude`: top-level keys a file may not set -> why (what to do instead)."""
    return _overlay(cls, dict(base), data, source, "", dict(exclude or {}))


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of the dataclass `cls` that has one."""
    values = {}
    for f in _init_fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _overlay(
    cls: type,
    values: dict[str, Any],
    data: Mapping[str, Any],
    source: str,
    path: str,
    exclude: dict[str, str],
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    # Each key of the table -> the field that holds it: a field of its own, or one of a
    # flattened field (whose keys sit at this level, as its flags do).
    owner: dict[str, str | None] = {}
    for f in _init_fields(cls):
        flat = _flattened(hints[f.name]) and _is_instance(values.get(f.name))
        for name in [g.name for g in _init_fields(type(values[f.name]))] if flat else [f.name]:
            owner[name] = f.name if flat else None
    allowed_extra = {ARCH_KEY} if getattr(cls, "ARCH", None) is not None else set()
    nested: dict[str, dict[str, Any]] = {}
    for key, raw in data.items():
        dotted = f"{path}{key}"
        if key in exclude:
            raise ConfigError(f"{source}: {dotted}: {exclude[key]}")
        if key in allowed_extra:
            continue  # the model's name: the caller chose the class by it
        if key not in owner:
            close = difflib.get_close_matches(key, [*owner, *allowed_extra], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: {dotted}: unknown key{hint}")
        holder = owner[key]
        if holder is not None:
            nested.setdefault(holder, {})[key] = raw
            continue
        values[key] = _value(values.get(key, dataclasses.MISSING), hints[key], raw, source, dotted)
    for holder, table in nested.items():
        current = values[holder]
        fields = {f.name: getattr(current, f.name) for f in _init_fields(type(current))}
        built = _overlay(type(current), fields, table, source, path, exclude)
        values[holder] = _construct(type(current), built, source, path)
    return values


def _value(current: Any, annotation: Any, raw: Any, source: str, dotted: str) -> Any:
    """The value of one key: a nested config from a table, else `raw` checked against the
    field's type."""
    annotation = _strip(annotation)
    classes = [a for a in _options(annotation) if dataclasses.is_dataclass(a)]
    if isinstance(raw, Mapping):
        if not classes:
            expected = _describe(annotation)
            raise ConfigError(f"{source}: {dotted}: expected {expected}, got a table")
        cls = type(current) if _is_instance(current) else classes[0]
        if ARCH_KEY in raw and getattr(cls, "ARCH", None) is not None:
            cls = _model_class(classes, raw[ARCH_KEY], source, dotted)
        if _is_instance(current) and type(current) is cls:
            base = {f.name: getattr(current, f.name) for f in _init_fields(cls)}
        else:  # another model than the starting point's: from its own defaults
            base = field_defaults(cls)
            missing = [f.name for f in _init_fields(cls) if f.name not in base | dict(raw)]
            if missing:
                why = f"; {ARCH_KEY} = {raw[ARCH_KEY]!r} needs it" if ARCH_KEY in raw else ""
                raise ConfigError(f"{source}: {dotted}.{missing[0]}: missing{why}")
        values = _overlay(cls, base, raw, source, f"{dotted}.", {})
        return _construct(cls, values, source, dotted)
    if classes and _is_instance(current):
        raise ConfigError(f"{source}: {dotted}: expected a table ([{dotted}]), got {raw!r}")
    if raw == NONE and type(None) in _options(annotation):
        return None
    try:
        return coerce(raw, annotation)
    except TypeError as e:
        raise ConfigError(f"{source}: {dotted}: {e} (got {raw!r})") from None


def _model_class(classes: list[type], arch: Any, source: str, dotted: str) -> type:
    names = {getattr(c, "ARCH", None): c for c in classes}
    if arch not in names:
        known = [n for n in names if n is not None]
        raise ConfigError(
            f"{source}: {dotted}.{ARCH_KEY}: {arch!r} is not a known model; choose from {known}"
        )
    return names[arch]


def _construct(cls: type, values: dict[str, Any], source: str, path: str) -> Any:
    """`cls(**values)`; its check's error names the dotted key (`model.d_model=100: ...`, not
    `GPTConfig.d_model=100: ...`)."""
    try:
        return cls(**values)
    except SparseTFError as e:
        message = str(e)
        prefix = f"{cls.__name__}."
        if message.startswith(prefix):
            message = f"{path}{'.' if path else ''}{message[len(prefix) :]}"
        elif path:
            message = f"{path}: {message}"
        raise ConfigError(f"{source}: {message}") from None


def _init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _flattened(annotation: Any) -> bool:
    """Whether tyro writes the field's flags without its name (`tyro.conf.arg(name="")`):
    then a file writes its fields without it too. Duck-typed: this module needs no tyro."""
    if get_origin(annotation) is not Annotated:
        return False
    return any(getattr(m, "name", None) == "" for m in annotation.__metadata__)


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _options(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(_strip(a) for a in get_args(annotation))
    return (annotation,)


def _describe(annotation: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in _options(annotation))
