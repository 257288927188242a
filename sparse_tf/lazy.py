"""Packages that import their modules on first use (`sparse_tf`, `sparse_tf.bridges`,
`sparse_tf.data`, `sparse_tf.pruning`, `sparse_tf.tasks`, `sparse_tf.training`): a name is
looked up in the package's table, its module imported then and the value kept in the package,
so that importing the package costs nothing until a name is used (`sparse-tf --help` imports no
torch).

    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package` (PEP 562), whose names are
    `table`'s keys, each from the module it names; `namespace` is the package's globals().

    A name that is also its module's own name (`sparse_tf.bridges.perturb`, the function of
    the module `sparse_tf.bridges.perturb`) stays the table's value: importing a submodule
    binds its name in the package to the module (whoever imports it, and whenever), which
    would otherwise replace the function, as an eager `from .perturb import perturb` did not.
    """
    namesakes = {name for name, module in table.items() if module == f"{package}.{name}"}
    if namesakes:

        class _Package(types.ModuleType):
            def __setattr__(self, name: str, value: Any) -> None:
                if name in namesakes and isinstance(value, types.ModuleType):
                    value = getattr(value, name)  # the submodule's namesake, not the module
                super().__setattr__(name, value)

        sys.modules[package].__class__ = _Package

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # once: later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
