"""`triton` and `tl` (triton.language) for the op modules, or stand-ins where triton is missing.

Each op's module defines its Triton kernels beside their launchers, so it imports triton when
it is imported: from here,

    from sparse_tf.kernels.triton_support import tl, triton

triton is optional (it has wheels for Linux x86_64 and aarch64 only; the pure-torch reference
path runs everywhere). Where it is not installed, `triton` and `tl` are stand-ins for what the
op modules evaluate when they are imported: the decorators `triton.jit`, `triton.autotune` and
`triton.heuristics`, `triton.Config` (spmm's autotuning configs) and `tl.constexpr`
(module-level kernel constants; annotations stay unevaluated under `from __future__ import
annotations`). The kernels are then defined but cannot run: a launch raises KernelError in one
line. `sparse_tf.kernels` never launches one there: it dispatches to the kernels only where
`INSTALLED` (`triton_installed()`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from sparse_tf.errors import SparseTFError
from sparse_tf.extras import installed


class KernelError(SparseTFError):
    """A kernel backend was forced where it cannot run."""


INSTALLED = installed("triton")
"""Whether triton can be imported: found once, at import, without importing it."""


class _Kernel:
    """A kernel defined without triton: launching it (`kernel[grid](...)`, or a call) raises
    KernelError."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __getitem__(self, grid: object) -> Callable[..., NoReturn]:
        return self.__call__

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        raise KernelError(f"the Triton kernel {self.__name__} cannot run: triton is not installed")


def _keep(kernel: _Kernel) -> _Kernel:
    return kernel


class _Config:
    """`triton.Config`: the values it was given, never used."""

    def __init__(self, kwargs: dict[str, Any], **options: Any) -> None:
        self.kwargs, self.options = kwargs, options


class _Constexpr:
    """`tl.constexpr(value)` at module level: the value, never used."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _TritonStandIn:
    """What the op modules use of `triton` at import, without triton."""

    Config = _Config

    @staticmethod
    def jit(fn: Callable[..., Any]) -> _Kernel:
        return _Kernel(fn)

    @staticmethod
    def autotune(*args: object, **kwargs: object) -> Callable[[_Kernel], _Kernel]:
        return _keep

    @staticmethod
    def heuristics(*args: object, **kwargs: object) -> Callable[[_Kernel], _Kernel]:
        return _keep


class _LanguageStandIn:
    """What the op modules use of `triton.language` at import, without triton."""

    constexpr = _Constexpr


if TYPE_CHECKING or INSTALLED:
    import triton
    import triton.language as tl
else:
    triton = _TritonStandIn()
    tl = _LanguageStandIn()

__all__ = ["INSTALLED", "KernelError", "tl", "triton"]
