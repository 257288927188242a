"""Config dataclasses: shared validation and (de)serialisation.

Every component keeps its config beside its code (`GPTConfig` in model.py, `SparsityConfig` in
sparsity.py, `OptimConfig` in optim.py); all of them derive from `Config`, which

- checks every field against its annotation when the object is built (a JSON file that says
  `"d_model": "64"` or `"anneal": "exponential"` fails loudly instead of being half-used, the
  classic bug of earlier reproductions), and
- round-trips through plain dicts (`to_dict` / `from_dict`) for config.json files, rejecting
  unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Self, Union, get_args, get_origin

from sparse_tf.errors import SparseTFError


class ConfigError(SparseTFError):
    """A config value or config file is invalid; the message names the field at fault."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class of all configs: frozen, typed fields, validated on construction.

    Subclasses are `@dataclasses.dataclass(frozen=True, kw_only=True)`; derive variants with
    `dataclasses.replace`.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                coerced = _coerce(value, hints[f.name])
            except TypeError as e:
                got = "" if isinstance(value, dict) else f" (got {value!r})"
                raise ConfigError(f"{type(self).__name__}.{f.name}: {e}{got}") from None
            object.__setattr__(self, f.name, coerced)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists in JSON, and back). Nested
        configs are written by their own `to_dict` (a model config adds the key that names
        its model: `ARCH_KEY`)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """Build from a dict, e.g. a parsed config.json; unknown keys are an error.

        Args:
            data: field name → value.
            source: where `data` came from (a file name), quoted in error messages.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where}{cls.__name__} must be a JSON object, got {type(data).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{where}unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}"
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{where}{cls.__name__} is missing required field(s) {missing}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None


ARCH_KEY = "arch"
"""The key of a saved model config that names the model it describes ("sparse_tf": the sparse
GPT of `sparse_tf.model`; "hf_gpt2": the dense GPT-2 of `sparse_tf.gpt2`)."""


def tagged_config(options: Sequence[type[Config]], data: Any, source: str | None = None) -> Any:
    """The config of `data` (a saved model config) among `options`, model configs that each
    name their model in a class attribute `ARCH`: the one whose ARCH is `data[ARCH_KEY]`, or
    the first when the key is absent (configs saved before there were several models)."""
    if not isinstance(data, dict):
        return options[0].from_dict(data, source)  # its error names what was expected
    arch = data.get(ARCH_KEY, options[0].ARCH)  # type: ignore[attr-defined]
    for option in options:
        if option.ARCH == arch:  # type: ignore[attr-defined]
            return option.from_dict(data, source)
    where = f"{source}: " if source else ""
    known = [o.ARCH for o in options]  # type: ignore[attr-defined]
    raise ConfigError(f"{where}{ARCH_KEY}={arch!r}: not a known model; choose from {known}")


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]  # what JSON gives back: a dict equals its saved form
    return value


def check(condition: bool, cfg: Config, field: str, requirement: str) -> None:
    """Raise a ConfigError naming `field` unless `condition` holds."""
    if not condition:
        value = getattr(cfg, field)
        raise ConfigError(f"{type(cfg).__name__}.{field}={value!r}: {requirement}")


def coerce(value: Any, annotation: Any) -> Any:
    """`value` as an instance of `annotation` (a field's type), or a TypeError saying what was
    expected: what a config checks each field with, for readers of other files (TOML)."""
    return _coerce(value, annotation)


def _coerce(value: Any, annotation: Any) -> Any:
    """Return `value` as an instance of `annotation`, or raise TypeError saying what was expected.

    Only the lossless conversions a JSON round trip needs are made: int → float, list → tuple.
    """
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        models = [o for o in get_args(annotation) if getattr(o, "ARCH", None) is not None]
        if models and isinstance(value, dict):  # model configs: the saved "arch" says which
            try:
                return tagged_config(models, value)
            except ConfigError as e:
                raise TypeError(str(e)) from None
        for option in get_args(annotation):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError(f"expected {_describe(annotation)}")
    if origin is Literal:
        if value in get_args(annotation) and not isinstance(value, bool):
            return value
        raise TypeError(f"expected one of {list(get_args(annotation))}")
    if origin is tuple and get_args(annotation)[1:] == (Ellipsis,):  # tuple[X, ...]
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"expected {_describe(annotation)}")
        return tuple(_coerce(v, get_args(annotation)[0]) for v in value)
    if origin is tuple:
        args = get_args(annotation)
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            raise TypeError(f"expected {_describe(annotation)}")
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(annotation, type) and issubclass(annotation, Config) and isinstance(value, dict):
        try:
            return annotation.from_dict(value)
        except ConfigError as e:
            raise TypeError(str(e)) from None
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError("expected None")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("expected a number")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("expected an integer")
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise TypeError(f"expected {annotation.__name__}")
    raise TypeError(f"unsupported annotation {annotation!r}")  # pragma: no cover


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(annotation))
    if origin is tuple and get_args(annotation)[1:] == (Ellipsis,):
        return f"a list of {_describe(get_args(annotation)[0])}"
    if origin is tuple:
        return f"a list of {len(get_args(annotation))} values"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
