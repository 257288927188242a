"""TransformerLens-style hook points: read and edit any named activation of a model.

A `HookPoint` is an identity module placed on an activation; its module path is its name
(`blocks.0.attn.hook_q`), so nnsight users reach the same activations through the module tree.
`HookedModule` gives a model

- `run_with_hooks(tokens, fwd_hooks=[(name_or_predicate, fn)], bwd_hooks=[...])`: a forward
  hook is called as `fn(activation, hook=hook_point)` (TransformerLens's convention: name the
  second parameter `hook`) and may return a replacement; a backward hook is called as
  `fn(gradient, hook=hook_point)` with the gradient of the activation and may return a
  replacement gradient;
- `run_with_cache(tokens, names_filter=...)` → `(output, ActivationCache)`; the cache takes full
  names, aliases and TransformerLens shorthands: `cache["resid_pre", 0]`, `cache["q", 1]`,
  `cache["normalized", 0, "ln2"]`;
- `hooks(fwd_hooks, bwd_hooks)`, a context manager for many passes under the same hooks.

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

    def __getitem__(self, name: str | tuple[Any, ...]) -> Tensor:
        key = self._shorthand(name) if isinstance(name, tuple) else self._aliases.get(name, name)
        if key not in self._acts:
            raise KeyError(f"{name!r} is not in this cache; cached: {_preview(list(self._acts))}")
        return self._acts[key]

    def _shorthand(self, name: tuple[Any, ...]) -> str:
        """The hook name of a TransformerLens shorthand: (kind, layer) is whichever of
        blocks.{layer}.hook_{kind}, blocks.{layer}.attn.hook_{kind} and
        blocks.{layer}.mlp.hook_{kind} is cached (two of them: a KeyError asking for the
        sublayer); (kind, layer, sub) is blocks.{layer}.{sub}.hook_{kind} (ln1, ln2, attn, mlp)."""
        if len(name) == 3:
            kind, layer, sub = name
            return f"blocks.{layer}.{sub}.hook_{kind}"
        if len(name) != 2:
            raise KeyError(f"{name!r}: a shorthand is (kind, layer) or (kind, layer, sublayer)")
        kind, layer = name
        found = [
            key
            for key in (f"blocks.{layer}.{sub}hook_{kind}" for sub in ("", "attn.", "mlp."))
            if key in self._acts
        ]
        if len(found) > 1:
            raise KeyError(f"{name!r} is ambiguous ({found}); add the sublayer: (kind, layer, sub)")
        return found[0] if found else f"blocks.{layer}.hook_{kind}"

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
        self._kept_handles: list[Any] = []  # run_with_hooks(..., reset_hooks_end=False)
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
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
    ) -> Iterator[None]:
        """Attach forward and backward hooks for the duration of the block; each kind runs in
        the order given. Backward hooks fire when a graph built inside the block is
        backpropagated (inside it or later)."""
        handles = self._attach(fwd_hooks, bwd_hooks)
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        **kwargs: Any,
    ) -> Any:
        """`self(*args, **kwargs)` with the hooks attached. Backward hooks belong to the graph
        this forward pass builds: they fire when its output is backpropagated, also after the
        hooks were removed. The hooks are removed when the forward pass returns unless
        `reset_hooks_end=False` (as in TransformerLens), which keeps them for later passes
        until `reset_hooks()`."""
        if reset_hooks_end:
            with self.hooks(fwd_hooks, bwd_hooks):
                return self(*args, **kwargs)
        self._kept_handles += self._attach(fwd_hooks, bwd_hooks)
        return self(*args, **kwargs)

    def reset_hooks(self) -> None:
        """Remove the hooks that `run_with_hooks(..., reset_hooks_end=False)` left attached."""
        for h in self._kept_handles:
            h.remove()
        self._kept_handles = []

    def _attach(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
    ) -> list[Any]:
        """Register the hooks; returns their handles (all removed again if one name is bad)."""
        handles: list[Any] = []
        try:
            for names, fn in fwd_hooks:
                for hp in self._select(names):
                    handles.append(hp.register_forward_hook(_forward(fn)))
            for names, fn in bwd_hooks:
                for hp in self._select(names):
                    handles.append(hp.register_full_backward_hook(_backward(fn)))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles

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


def _forward(fn: HookFn) -> Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor | None]:
    def torch_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        return fn(output, hook=module)  # type: ignore[call-arg]

    return torch_hook


def _backward(
    fn: HookFn,
) -> Callable[[nn.Module, tuple[Tensor | None, ...], tuple[Tensor | None, ...]], Any]:
    """A hook point is the identity, so the gradient of its output is that of its input: `fn`
    sees it, and what it returns replaces it."""

    Grads = tuple[Tensor | None, ...]

    def torch_hook(module: nn.Module, grad_input: Grads, grad_output: Grads) -> Grads | None:
        (grad,) = grad_output
        if grad is None:
            return None
        new = fn(grad, hook=module)  # type: ignore[call-arg]
        return None if new is None else (new,)

    return torch_hook


def _preview(names: list[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} names)"
