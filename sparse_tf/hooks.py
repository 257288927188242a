"""TransformerLens-style hook points: read and edit any named activation of a model.

A `HookPoint` is an identity module placed on an activation; its module path is its name
(`blocks.0.attn.hook_q`), so nnsight users reach the same activations through the module tree.
`HookedModule` gives a model

- `run_with_hooks(tokens, fwd_hooks=[(name_or_predicate, fn)])`, where `fn(tensor, hook)` may
  return a replacement tensor;
- `run_with_cache(tokens, names_filter=...)` → `(output, ActivationCache)`;
- `hooks(fwd_hooks)`, a context manager for many forward passes under the same hooks.

Hooks are always removed on exit, also when the forward pass raises. Names may also be given in
the model's alias vocabulary (`hook_aliases()`, e.g. the official circuit_sparsity names).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.modules import module as registry

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookPoint(nn.Module):
    """Identity module that marks an activation; forward hooks attach here.

    `name` is the module path inside the hooked model, set by `HookedModule.setup_hooks`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether anything can see this activation: a forward hook or pre-hook on this point
        or on every module (lets a model skip work nobody reads, or fuse across the point)."""
        return bool(
            self._forward_hooks
            or self._forward_pre_hooks
            or registry._global_forward_hooks
            or registry._global_forward_pre_hooks
        )

    def extra_repr(self) -> str:
        return repr(self.name)


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one forward pass by hook name (in execution order); aliases resolve too."""

    def __init__(self, activations: dict[str, Tensor], aliases: Mapping[str, str]) -> None:
        self._acts = activations
        self._aliases = aliases

    def __getitem__(self, name: str) -> Tensor:
        key = self._aliases.get(name, name)
        if key not in self._acts:
            raise KeyError(f"{name!r} is not in this cache; cached: {_preview(list(self._acts))}")
        return self._acts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({_preview(list(self._acts))})"


class HookedModule(nn.Module):
    """Base class of models with hook points; call `setup_hooks()` at the end of `__init__`."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_aliases(self) -> dict[str, str]:
        """Alternative name → canonical hook name. Override to offer another vocabulary."""
        return {}

    @property
    def hook_names(self) -> list[str]:
        """All hook names, in the order a forward pass reaches them."""
        return list(self._hook_points)

    def resolve_hook_name(self, name: str) -> str:
        """The canonical hook name for a canonical or alias `name`; a clear error otherwise."""
        if name in self._hook_points:
            return name
        aliases = self.hook_aliases()
        if name in aliases:
            return aliases[name]
        close = difflib.get_close_matches(name, [*self._hook_points, *aliases], n=3)
        hint = f"; did you mean {close}?" if close else "; see model.hook_names"
        raise KeyError(f"unknown hook name {name!r}{hint}")

    def _select(self, names: NameFilter) -> list[HookPoint]:
        if names is None:
            return list(self._hook_points.values())
        if isinstance(names, str):
            return [self._hook_points[self.resolve_hook_name(names)]]
        if callable(names):
            return [hp for name, hp in self._hook_points.items() if names(name)]
        return [self._hook_points[self.resolve_hook_name(n)] for n in names]

    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]
    ) -> Iterator[None]:
        """Attach forward hooks for the duration of the block; they run in the order given."""
        handles = []
        try:
            for names, fn in fwd_hooks:
                for hp in self._select(names):
                    handles.append(hp.register_forward_hook(_adapt(fn)))
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        **kwargs: Any,
    ) -> Any:
        """`self(*args, **kwargs)` with `fwd_hooks` attached; hooks are removed on exit."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self, *args: Any, names_filter: NameFilter = None, **kwargs: Any
    ) -> tuple[Any, ActivationCache]:
        """Run forward and record activations (detached) at the selected hook points.

        Args:
            names_filter: None (all hooks), one name, a list of names (aliases allowed), or a
                predicate on canonical names.

        Returns:
            (the model's output, the cache). Hooks already attached through `hooks()` run
            first, so the cache shows their edits.
        """
        acts: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            acts[hook.name] = x.detach()

        with self.hooks([(hp.name, save) for hp in self._select(names_filter)]):
            out = self(*args, **kwargs)
        return out, ActivationCache(acts, self.hook_aliases())  # filled in execution order


def _adapt(fn: HookFn) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor | None]:
    def torch_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        return fn(output, module)  # type: ignore[arg-type]

    return torch_hook


def _preview(names: list[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} names)"
