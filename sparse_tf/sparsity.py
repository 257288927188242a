"""Activation and weight sparsity: AbsTopK, the L0 weight projection, and their schedules.

Semantics follow Gao et al. 2025 and the official training script (README, "The recipe"):

- **AbsTopK** keeps, per token, the k = int(frac · width) entries of largest |x| and zeros the
  rest; gradients flow only through the kept entries.
- **Projection**: after every optimizer step each weight matrix keeps exactly its top-k entries
  by magnitude, k = round(L0 · numel). Before the global top-k, the j largest entries of every
  neuron are protected (forced into the kept set), so no neuron is left with fewer than j
  nonzeros. The axis is the neuron's: rows of qkv and MLP-in, columns of attention-out and
  MLP-out. When protection alone needs more than k entries, protection wins and the matrix
  keeps n_neurons · j entries. Embedding matrices use min(1, L0 · embed_mult) and no protection
  (`embed_schedule="linear"`: the official train.py's line from dense to that final density).
- **Ties** are broken towards the lower (flattened, row-major) index everywhere, so the kept set
  is a pure function of the values: kernels, sharded runs and resumes reproduce it exactly.
- **Anneal**: L0 goes linearly from 1 (dense) to the target between `anneal_start` and
  `anneal_end` (fractions of training). **Sharkfin** multiplies the LR by √(L0_target / L0_now).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from sparse_tf import kernels
from sparse_tf.kernels.rule import topk_mask  # noqa: F401 - the selection rule, re-exported
from sparse_tf.linear import SparseLinear
from sparse_tf.sparsity_config import SparsityConfig, abstopk_k

# ---------------------------------------------------------------------------------------------
# AbsTopK (activation sparsity)
# ---------------------------------------------------------------------------------------------


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| along the last dim (signed values), zero the rest.

    The backward pass is grad · mask: exactly zero outside the kept entries. On CUDA this runs
    the Triton kernel, elsewhere the pure-torch reference (`sparse_tf.kernels`); both select the
    same entries.

    Args:
        x: [..., width] activations.
        k: entries kept per row, 1 ≤ k ≤ width.
    """
    width = x.shape[-1]
    if not 1 <= k <= width:
        raise ValueError(f"abs_topk: k={k} must be in [1, {width}] for rows of width {width}")
    if k == width:
        return x
    return kernels.abs_topk(x, k)


class AbsTopK(nn.Module):
    """AbsTopK as a module: k = int(frac · width) of the last dim; `frac=None` is the identity."""

    def __init__(self, frac: float | None) -> None:
        super().__init__()
        if frac is not None and not 0.0 < frac <= 1.0:
            raise ValueError(f"AbsTopK: frac={frac} must be in (0, 1] or None")
        self.frac = frac

    def forward(self, x: Tensor) -> Tensor:
        if self.frac is None:
            return x
        return abs_topk(x, self._k(x.shape[-1]))

    def selects(self, width: int) -> bool:
        """Whether it drops anything from rows of `width` (else it is the identity). Where it
        does, the methods below take the `bias` that the product making x added with its
        gradient cut (`SparseLinear.forward(x, bias_grad_elsewhere=True)`), and return its gradient
        from their own backward pass (`kernels.abs_topk_split` says how)."""
        return self.frac is not None and self._k(width) < width

    def add_to(self, r: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """r + AbsTopK(x), fused on the GPU (a sublayer's write into the residual stream)."""
        if not self.selects(x.shape[-1]):
            _no_bias(bias)
            return r + x
        return kernels.residual_abs_topk(r, x, self._k(x.shape[-1]), bias)

    def norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """AbsTopK(F.rms_norm(x) · weight), fused on the GPU (a sublayer's input read from the
        residual stream), where its output is in the dtype the next product computes in."""
        if not self.selects(x.shape[-1]):
            return F.rms_norm(x, (x.shape[-1],), weight)
        return kernels.norm_abs_topk(x, weight, self._k(x.shape[-1]))

    def gelu(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """AbsTopK(GELU(x)), with one fused backward on the GPU (the MLP's hidden neurons)."""
        if not self.selects(x.shape[-1]):
            _no_bias(bias)
            return F.gelu(x)
        return kernels.gelu_abs_topk(x, self._k(x.shape[-1]), bias)

    def split(self, x: Tensor, parts: int, bias: Tensor | None = None) -> tuple[Tensor, ...]:
        """AbsTopK of each of `parts` equal slices of the last dim, as separate tensors (one
        launch on the GPU): q, k and v of the fused qkv product."""
        width = x.shape[-1] // parts
        if not self.selects(width):
            _no_bias(bias)
            return x.chunk(parts, dim=-1)
        return kernels.abs_topk_split(x, self._k(width), parts, bias)

    def _k(self, width: int) -> int:
        k = abstopk_k(self.frac, width)
        if k < 1:
            raise ValueError(f"AbsTopK: frac={self.frac} keeps no entry of a row of width {width}")
        return k

    def extra_repr(self) -> str:
        return f"frac={self.frac}"


def _no_bias(bias: Tensor | None) -> None:
    # The identity has no backward pass to compute a bias's gradient in: a caller that cut the
    # product's bias gradient must only do so where `selects` said yes.
    if bias is not None:
        raise ValueError("AbsTopK: a bias's gradient was handed to an AbsTopK that keeps all")


# ---------------------------------------------------------------------------------------------
# Weight projection
# ---------------------------------------------------------------------------------------------

ROWS = 0
"""`neuron_dim` of matrices whose neurons are rows: nn.Linear weights [out, in] of qkv, MLP-in."""
COLS = 1
"""`neuron_dim` of matrices whose neurons are columns: attention-out and MLP-out projections."""


@dataclasses.dataclass(frozen=True)
class SparseWeight:
    """One L0-constrained weight matrix of a model, as the model declares it.

    Attributes:
        name: parameter name in `model.named_parameters()`.
        param: the parameter, a 2-D tensor.
        kind: "block" matrices go to the target L0; "embedding" ones (token embedding,
            unembedding) to min(1, L0 · embed_mult); "positional" (the positional table) to
            either, as `SparsityConfig.pos_density` says.
        neuron_dim: ROWS or COLS, the axis whose slices are neurons (protected), or None.
        layer: the SparseLinear owning `param`, told its kept count after every projection so
            that it can use the sparse matmul; None for other layers.
    """

    name: str
    param: nn.Parameter
    kind: Literal["block", "embedding", "positional"]
    neuron_dim: int | None
    layer: SparseLinear | None = None


def embed_mult(w: SparseWeight, cfg: SparsityConfig) -> float:
    """The ratio of an embedding matrix's final density to the block L0: `cfg.embed_mult`, or
    d_model / 256 (every embedding matrix is [rows, d_model])."""
    return cfg.embed_mult if cfg.embed_mult is not None else w.param.shape[1] / 256


def density(w: SparseWeight, l0: float, cfg: SparsityConfig) -> float:
    """The nonzero fraction `w` is projected to when block matrices are at `l0`."""
    if w.kind == "block" or (w.kind == "positional" and cfg.pos_density == "block"):
        return l0
    final = cfg.l0 * embed_mult(w, cfg)
    if cfg.embed_schedule == "linear" and cfg.l0 < 1.0:
        # The official line: dense at L0 = 1, `final` at L0 = cfg.l0, affine in between.
        return min(1.0, final + (1.0 - final) * (l0 - cfg.l0) / (1.0 - cfg.l0))
    return min(1.0, l0 * embed_mult(w, cfg))


def kept_count(w: SparseWeight, l0: float, cfg: SparsityConfig) -> int:
    """Entries of `w` kept by `project_weights_` at `l0`: max(top-k budget, protected entries)."""
    numel = w.param.numel()
    budget = density(w, l0, cfg) * numel
    k = max(1, int(budget) if cfg.kept_rounding == "floor" else round(budget))
    if w.neuron_dim is None or cfg.min_per_neuron == 0:
        return min(k, numel)
    n_neurons = w.param.shape[w.neuron_dim]
    per_neuron = numel // n_neurons
    protected = n_neurons * min(cfg.min_per_neuron, per_neuron)
    return min(max(k, protected), numel)


def sparse_weights(model: nn.Module) -> list[SparseWeight]:
    """The L0-constrained matrices of `model` (it must declare them via `sparse_weights()`)."""
    declare = getattr(model, "sparse_weights", None)
    if declare is None:
        raise TypeError(
            f"{type(model).__name__} does not declare its sparse matrices; "
            "it needs a sparse_weights() -> list[SparseWeight] method (sparse_tf.GPT has one)"
        )
    return declare()


def protection(w: SparseWeight, cfg: SparsityConfig) -> kernels.Protect | None:
    """The per-neuron protection of `w` (its min_per_neuron largest |w| per neuron, ties to the
    lower index, are kept first), or None when `w` is unprotected."""
    if w.neuron_dim is None or cfg.min_per_neuron == 0:
        return None
    return kernels.Protect(w.neuron_dim, cfg.min_per_neuron)


def weight_mask(w: SparseWeight, l0: float, cfg: SparsityConfig) -> Tensor:
    """Boolean mask of the entries of `w` that projection to `l0` keeps (same shape as w)."""
    keep = kernels.projection_masks([w.param], [protection(w, cfg)], [kept_count(w, l0, cfg)])
    return keep[0]


ShardedProjection = Callable[[Sequence[Tensor], Sequence[int | None], Sequence[int], int], None]
"""(row-sharded params, neuron dims, kept counts, min_per_neuron) -> None: projects in place."""

_sharded_projection: ShardedProjection | None = None


def register_sharded_projection(fn: ShardedProjection) -> None:
    """Make `project_weights_` project FSDP-sharded matrices with `fn`. The sharding package
    (`sparse_tf.parallel`, above this module) registers its collective projection when it is
    imported, which it is before any model can be sharded; this module never imports it."""
    global _sharded_projection
    _sharded_projection = fn


@torch.no_grad()
def project_weights_(model: nn.Module, l0: float, cfg: SparsityConfig) -> dict[str, int]:
    """Project every sparse matrix of `model` in place to its top-magnitude entries at `l0`.

    Biases, norm gains, attention sinks and the bigram table are not touched (they are not
    declared sparse). On CUDA all matrices are selected together by the radix-select kernel
    (`sparse_tf.kernels.projection`), elsewhere one `torch.topk` each; FSDP-sharded matrices by
    `sparse_tf.parallel.project_sharded_` (collective); the kept sets are identical.

    Args:
        model: a model with `sparse_weights()`, e.g. `sparse_tf.GPT`.
        l0: nonzero fraction of block matrices, in (0, 1]; 1 leaves everything dense.
        cfg: embedding multiplier and per-neuron protection.

    Returns:
        Parameter name → entries kept (the nonzero count, unless a kept entry is exactly 0).
        Computed on the host: no device synchronisation.
    """
    if not 0.0 < l0 <= 1.0:
        raise ValueError(f"project_weights_: l0={l0} must be in (0, 1]")
    weights = sparse_weights(model)
    counts = {w.name: kept_count(w, l0, cfg) for w in weights}
    todo = [w for w in weights if counts[w.name] < w.param.numel()]
    if not todo:
        return counts
    params = [w.param for w in todo]

    def apply(ks: Sequence[int] | Tensor) -> None:
        kernels.project_(params, [protection(w, cfg) for w in todo], ks)

    ks = [counts[w.name] for w in todo]
    if isinstance(params[0], DTensor):  # FSDP: each rank holds rows of every matrix
        if _sharded_projection is None:
            raise RuntimeError(
                "project_weights_: the weights are FSDP shards but no sharded projection is "
                "registered (import sparse_tf.parallel, which shards models and registers it)"
            )
        _sharded_projection(params, [w.neuron_dim for w in todo], ks, cfg.min_per_neuron)
        return counts  # the layers see freshly gathered weights: nothing to mark
    if params[0].is_cuda and kernels.projection_backend(params[0]) == "triton":
        # A few hundred small launches: captured once as a CUDA graph, replayed every step.
        static = (cfg.min_per_neuron, tuple(w.neuron_dim for w in todo))
        kernels.graphs.graphed("projection", apply, ks, params, static)
    else:
        apply(ks)
    for p in params:
        # Kernel writes and graph replays leave the in-place version counter alone; bump it so
        # that everything keyed on it (the sparse-matmul formats) sees the new weights.
        torch.autograd.graph.increment_version(p)
    mark_sparse(model, counts)
    return counts


def mark_sparse(model: nn.Module, kept: dict[str, int]) -> None:
    """Tell the layers of `model`'s sparse matrices how many nonzeros each holds now (name →
    count, as `project_weights_` returns), enabling their sparse matmul until the weights are
    next modified. `project_weights_` calls it; call it again after scaling the weights in
    place (weight decay keeps the zeros), or with `count_nonzeros` after loading weights."""
    for w in sparse_weights(model):
        if w.layer is not None and w.name in kept:
            w.layer.mark_sparse(kept[w.name])


def count_nonzeros(model: nn.Module) -> dict[str, int]:
    """Parameter name → nonzero entries of every sparse matrix (synchronises with the device)."""
    return {w.name: int(torch.count_nonzero(w.param)) for w in sparse_weights(model)}


# ---------------------------------------------------------------------------------------------
# Schedules: pure functions of (step, total_steps)
# ---------------------------------------------------------------------------------------------


def _progress(step: int, total_steps: int, before: bool = False) -> float:
    """Fraction of training done once `step` (0-based) has been taken: (step + 1) / total; or
    before it is taken (`before`): step / total."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= step < total_steps:
        raise ValueError(f"step={step} is outside [0, total_steps={total_steps})")
    return (step + (0 if before else 1)) / total_steps


def l0_at_progress(progress: float, cfg: SparsityConfig) -> float:
    """Block-matrix L0 once a fraction `progress` ∈ [0, 1] of training is done."""
    start, end = cfg.anneal_start, cfg.anneal_end
    if progress >= end:
        return cfg.l0
    if progress <= start:
        return 1.0
    return 1.0 + (cfg.l0 - 1.0) * (progress - start) / (end - start)


def l0_schedule(step: int, total_steps: int, cfg: SparsityConfig) -> float:
    """Block-matrix L0 that step `step` (0-based) projects to.

    1 until `anneal_start`, linear to `cfg.l0` at `anneal_end`, `cfg.l0` after; the last step
    always ends at the target when anneal_end ≤ 1 (with `anneal_clock="after_step"`).
    """
    before = cfg.anneal_clock == "before_step"
    return l0_at_progress(_progress(step, total_steps, before), cfg)


def sharkfin(step: int, total_steps: int, cfg: SparsityConfig) -> float:
    """LR multiplier √(l0 / L0_now) of step `step`: ≤ 1, and exactly 1 once annealing ends."""
    if not cfg.sharkfin:
        return 1.0
    return math.sqrt(cfg.l0 / l0_schedule(step, total_steps, cfg))
