"""Synthetic generative processes with exact belief states (the analyses' ground truth).

A generalised hidden Markov model (GHMM) with V tokens and S states is a tensor T [V, S, S]:
T[x][i, j] weighs emitting x while moving from state i to j. With T̄ = Σ_x T[x], r its right
eigenvector of eigenvalue 1 and η₀ its left one (η₀·r = 1), a belief η predicts
p(x | η) = η T[x] r / (η r) and is updated by η ← η T[x] / (η T[x] r). For an HMM (entries
≥ 0, rows of T̄ summing to 1) r = 1 and beliefs are distributions over states; a GHMM's may
have negative entries (`tom_quantum`).

    process = factored_process()                 # 3 x Mess3 + 2 x tom_quantum: 432 tokens
    tokens, beliefs = process.sample(1000, 8, np.random.default_rng(0))
    # tokens [1000, 8]; beliefs[f] [1000, 8, S_f]: factor f's belief after each token

`markov_chain()` is the 4-state circulant chain of the ACE paper (tokens = states).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class GHMM:
    """A (generalised) HMM: T [V, S, S], with its stationary belief and right eigenvector."""

    name: str
    transitions: Array  # [V, S, S]

    def __post_init__(self) -> None:
        t = self.transitions
        if t.ndim != 3 or t.shape[1] != t.shape[2]:
            raise ValueError(f"{self.name}: transitions must be [V, S, S], got {t.shape}")

    @property
    def vocab(self) -> int:
        return self.transitions.shape[0]

    @property
    def states(self) -> int:
        return self.transitions.shape[1]

    @functools.cached_property
    def stationary(self) -> Array:
        """η₀, the belief before any token: the left eigenvector of T̄ for eigenvalue 1,
        summing to 1."""
        values, vectors = np.linalg.eig(self.transitions.sum(0).T)
        eta = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        if abs(eta.sum()) < 1e-12:
            raise ValueError(f"{self.name}: the stationary belief cannot be normalised to sum 1")
        return eta / eta.sum()

    @functools.cached_property
    def right(self) -> Array:
        """r: T̄ r = r (unit eigenvalue), scaled so that η₀ · r = 1."""
        values, vectors = np.linalg.eig(self.transitions.sum(0))
        r = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        return r / (self.stationary @ r)

    def probabilities(self, beliefs: Array) -> Array:
        """p(x | η) for beliefs [n, S]: [n, V]."""
        r = self.right
        p = np.einsum("ns,vst,t->nv", beliefs, self.transitions, r) / (beliefs @ r)[:, None]
        return np.clip(p, 0.0, None)  # GHMM rounding can dip below 0

    def update(self, beliefs: Array, tokens: NDArray[np.int64]) -> Array:
        """η T[x] / (η T[x] r) for beliefs [n, S] and observed tokens [n]."""
        new = np.einsum("ns,nst->nt", beliefs, self.transitions[tokens])
        return new / (new @ self.right)[:, None]


def mess3(x: float = 0.15, a: float = 0.6) -> GHMM:
    """Mess3(x, a): 3 states, 3 tokens; stay with 1 − 2x, move to each other state with x, then
    emit the new state's token with a (each other token with (1 − a)/2)."""
    move = np.full((3, 3), x) + np.eye(3) * (1 - 3 * x)
    emit = np.full((3, 3), (1 - a) / 2) + np.eye(3) * (a - (1 - a) / 2)
    t = np.einsum("ij,jk->kij", move, emit)  # T[k]_ij = M_ij E_jk
    return GHMM(f"mess3(x={x}, a={a})", t)


def tom_quantum(alpha: float = 1.0, beta: float = 3.0) -> GHMM:
    """tom_quantum(α, β): a GHMM of 3 'states' and 4 tokens whose beliefs fill a disk."""
    g2 = 1 / (4 * (alpha**2 + beta**2))
    c, m, o = 0.25, (alpha**2 - beta**2) * g2, 2 * alpha * beta * g2
    t = np.array(
        [
            [[c, 0, o], [0, m, 0], [o, 0, c]],
            [[c, 0, -o], [0, m, 0], [-o, 0, c]],
            [[c, o, 0], [o, c, 0], [0, 0, m]],
            [[c, -o, 0], [-o, c, 0], [0, 0, m]],
        ]
    )
    return GHMM(f"tom_quantum(alpha={alpha}, beta={beta})", t)


def markov_chain(states: int = 4, stay: float = 0.75) -> GHMM:
    """The circulant chain: stay with `stay`, else step to the next state; the token is the
    new state. Eigenvalues of the 4-state default: 1, 0.75 ± 0.25i, 0.5."""
    step = np.eye(states) * stay + np.roll(np.eye(states), 1, axis=1) * (1 - stay)
    t = np.zeros((states, states, states))
    for k in range(states):
        t[k][:, k] = step[:, k]  # emit the state entered
    return GHMM(f"markov_chain(states={states}, stay={stay})", t)


@dataclasses.dataclass(frozen=True)
class FactoredProcess:
    """Independent factors emitting one composite token per step (mixed radix, factor 0 most
    significant); with `noise` ε the composite token is uniform with probability ε, and every
    factor still updates its belief with its part of the token actually emitted."""

    factors: tuple[GHMM, ...]
    noise: float = 0.0

    @property
    def vocab(self) -> int:
        return math.prod(f.vocab for f in self.factors)

    def compose(self, parts: NDArray[np.int64]) -> NDArray[np.int64]:
        """Factor tokens [..., F] -> composite tokens [...]."""
        token = np.zeros(parts.shape[:-1], dtype=np.int64)
        for i, f in enumerate(self.factors):
            token = token * f.vocab + parts[..., i]
        return token

    def decompose(self, tokens: NDArray[np.int64]) -> NDArray[np.int64]:
        """Composite tokens [...] -> factor tokens [..., F]."""
        parts = []
        rest = np.asarray(tokens, dtype=np.int64)
        for f in reversed(self.factors):
            parts.append(rest % f.vocab)
            rest = rest // f.vocab
        return np.stack(parts[::-1], axis=-1)

    def sample(
        self, n: int, length: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], list[Array]]:
        """n sequences of `length` composite tokens [n, length] and, per factor, the belief
        after each token [n, length, S_f]."""
        beliefs = [np.tile(f.stationary, (n, 1)) for f in self.factors]
        tokens = np.zeros((n, length), dtype=np.int64)
        history: list[list[Array]] = [[] for _ in self.factors]
        for t in range(length):
            parts = np.stack(
                [
                    _draw(f.probabilities(b), rng)
                    for f, b in zip(self.factors, beliefs, strict=True)
                ],
                axis=-1,
            )
            if self.noise > 0:
                noisy = rng.random(n) < self.noise
                parts[noisy] = self.decompose(rng.integers(0, self.vocab, noisy.sum()))
            tokens[:, t] = self.compose(parts)
            for i, f in enumerate(self.factors):
                beliefs[i] = f.update(beliefs[i], parts[:, i])
                history[i].append(beliefs[i])
        return tokens, [np.stack(h, axis=1) for h in history]

    def vary_one(
        self, factor: int, n: int, length: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], list[Array]]:
        """`sample` with every factor but `factor` frozen: their token streams (drawn once)
        are the same in all n sequences; only `factor` varies. Noise-free."""
        if not 0 <= factor < len(self.factors):
            raise ValueError(f"factor {factor} is not in [0, {len(self.factors)})")
        frozen = dataclasses.replace(self, noise=0.0)
        tokens, beliefs = frozen.sample(n, length, rng)  # `factor` varies across the rows
        parts = frozen.decompose(tokens)
        shared = frozen.decompose(frozen.sample(1, length, rng)[0])[0]  # [length, F]
        for i, f in enumerate(self.factors):
            if i == factor:
                continue
            parts[:, :, i] = shared[:, i]  # the same stream in every row
            b = np.tile(f.stationary, (n, 1))
            track = []
            for t in range(length):
                b = f.update(b, parts[:, t, i])
                track.append(b)
            beliefs[i] = np.stack(track, axis=1)
        return frozen.compose(parts), beliefs


def _draw(p: Array, rng: np.random.Generator) -> NDArray[np.int64]:
    """One index per row of probabilities p [n, V] (renormalised)."""
    cumulative = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    u = rng.random((len(p), 1))
    return np.minimum((u > cumulative).sum(1), p.shape[1] - 1)


def factored_process(noise: float = 0.0) -> FactoredProcess:
    """The paper's independent process: Mess3(0.15, 0.6) x 3 and tom_quantum(1, 3) x 2,
    432 composite tokens; factored beliefs span 10 dimensions, joint ones 242."""
    return FactoredProcess((mess3(), mess3(), mess3(), tom_quantum(), tom_quantum()), noise)
