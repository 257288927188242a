"""Node masks: learnable scores τ with a hard gate, and mean ablation through hook points.

The gate of a node is the Heaviside step 1[τ > 0], exactly binary in the forward pass. Its
gradient is the derivative of a sigmoid at temperature T, σ'(τ/T)/T (a straight-through
estimator, the paper's "sigmoid estimator"; hard-concrete did worse there). A gated-off node is
mean-ablated: its activation is replaced by its mean over pretraining data, so pruning removes
information, not the activation's typical size.

    masks = NodeMasks(sites, init_bias=0.1, init_noise=0.01, generator=g)
    with mean_ablation(model, masks.gates(), means):
        logits = model(tokens)          # differentiable in masks' τ
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from sparse_tf.model import GPT
from sparse_tf.pruning.means import MeansError
from sparse_tf.pruning.nodes import NodeSite, check_nodes

Gates = Mapping[str, Tensor]
"""Hook name → gate [width] in {0, 1} (float): 1 keeps a channel, 0 mean-ablates it."""


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tau: Tensor, temp: float) -> Tensor:
        ctx.save_for_backward(tau)
        ctx.temp = temp  # type: ignore[attr-defined]
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (tau,) = ctx.saved_tensors  # type: ignore[attr-defined]
        temp = ctx.temp  # type: ignore[attr-defined]
        s = torch.sigmoid(tau / temp)
        return grad * s * (1 - s) / temp, None


def heaviside(tau: Tensor, temp: float = 1.0) -> Tensor:
    """1[τ > 0] forward; σ'(τ/temp)/temp backward."""
    return _Heaviside.apply(tau, temp)  # type: ignore[no-any-return]


class NodeMasks(nn.Module):
    """One score τ per node of each site, clamped to [-1, 1].

    τ starts at N(init_bias, init_noise) (clamped), so every node starts on: the pruning
    objective switches nodes off, never on from nothing.
    """

    def __init__(
        self,
        sites: Sequence[NodeSite],
        *,
        init_bias: float = 0.1,
        init_noise: float = 0.01,
        temperature: float = 1.0,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.temperature = temperature
        self.taus = nn.ParameterList(
            nn.Parameter(
                (init_bias + init_noise * torch.randn(s.width, generator=generator))
                .clamp_(-1.0, 1.0)
                .to(device)
            )
            for s in self.sites
        )

    def gates(self) -> dict[str, Tensor]:
        return {
            s.name: heaviside(t, self.temperature)
            for s, t in zip(self.sites, self.taus, strict=True)
        }

    @torch.no_grad()
    def clamp_(self) -> None:
        for t in self.taus:
            t.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def n_active(self) -> int:
        return int(sum(int((t > 0).sum()) for t in self.taus))

    @property
    def n_nodes(self) -> int:
        return sum(s.width for s in self.sites)

    @torch.no_grad()
    def ranking(self) -> Tensor:
        """[n_nodes] flat node indices (sites concatenated in order), highest τ first; ties
        keep site and channel order, so the ranking is deterministic."""
        flat = torch.cat([t.detach().float().cpu() for t in self.taus])
        return torch.sort(flat, descending=True, stable=True).indices

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        return {
            s.name: t.detach().float().cpu().clone()
            for s, t in zip(self.sites, self.taus, strict=True)
        }


def keep_gates(
    sites: Sequence[NodeSite],
    nodes: Mapping[str, Sequence[int] | Tensor],
    device: torch.device | str = "cpu",
    invert: bool = False,
) -> dict[str, Tensor]:
    """Gates that keep exactly `nodes` (hook name → channel indices; missing sites keep none;
    a name or index outside `sites` is a NodeError). With `invert`, every node except `nodes`
    is kept (the necessity test)."""
    check_nodes(nodes, sites)
    gates = {}
    for s in sites:
        g = torch.zeros(s.width, device=device)
        idx = torch.as_tensor(list(nodes.get(s.name, ())), dtype=torch.long, device=device)
        g[idx] = 1.0
        gates[s.name] = 1.0 - g if invert else g
    return gates


def top_k_gates(
    sites: Sequence[NodeSite], ranking: Tensor, k: int, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Gates that keep the first `k` nodes of a flat `ranking` (see `NodeMasks.ranking`)."""
    flat = torch.zeros(sum(s.width for s in sites))
    flat[ranking[:k]] = 1.0
    return {
        s.name: g.to(device)
        for s, g in zip(sites, flat.split([s.width for s in sites]), strict=True)
    }


def gate_nodes(gates: Gates) -> dict[str, list[int]]:
    """The kept channel indices per hook name (sites with none kept are left out)."""
    out = {}
    for name, g in gates.items():
        idx = torch.nonzero(g.detach() > 0).flatten().tolist()
        if idx:
            out[name] = idx
    return out


@contextlib.contextmanager
def mean_ablation(model: GPT, gates: Gates, means: Mapping[str, Tensor]) -> Iterator[None]:
    """Within the block, every forward pass of `model` replaces channel c at hook h by
    `means[h][c]` where `gates[h][c]` is 0: x·g + μ·(1 − g). With g in {0, 1} this is exactly
    x or exactly μ, and it stays differentiable in g (for mask training)."""
    missing = [name for name in gates if name not in means]
    if missing:
        raise MeansError(f"no ablation means for hook(s) {missing[:3]}")

    def ablate(x: Tensor, hook: nn.Module) -> Tensor:
        g, mu = gates[hook.name], means[hook.name]  # type: ignore[index]
        return (x * g + mu * (1 - g)).to(x.dtype)

    with model.hooks([(name, ablate) for name in gates]):
        yield
