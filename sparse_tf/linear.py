"""`SparseLinear`: an nn.Linear that knows how sparse its weight is and uses the sparse matmul.

The weight stays an ordinary dense parameter holding zeros (the optimizer, the projection,
checkpoints and hooks see nothing different). Whoever makes the weight sparse says so with
`mark_sparse(kept)` — the projection does, after every optimizer step — and from then on,
until the weight is next modified in place by anything else, the forward and dX products may
run on the sparse kernel (`sparse_tf.kernels.sparse_linear` decides per shape and density).
A weight changed behind the layer's back (a loaded state dict, an edit) has a new in-place
version, so the layer falls back to cuBLAS until it is marked again: it never trusts a stale
count.

Inside a CUDA graph's capture the products stay on cuBLAS, unless the capture is made under
`GraphedProducts.recording()`: a replay runs no Python, so the sparse formats it reads must be
brought up to date before each replay (`GraphedProducts.refresh`), which only the code that
replays the graph can do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from sparse_tf import kernels
from sparse_tf.errors import SparseTFError


class SparseLinear(nn.Linear):
    """nn.Linear [in_features -> out_features] whose weight may be marked sparse."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.kept: int | None = None  # at most this many nonzeros, while the stamp holds
        self._stamp: int | None = None  # weight._version when marked
        self._formats = kernels.WeightFormats()

    def mark_sparse(self, kept: int | None) -> None:
        """The weight has at most `kept` nonzeros now (None: unknown, use dense products)."""
        if kept is not None and kept >= self.weight.numel():
            kept = None  # dense: nothing to gain
        if isinstance(self.weight, DTensor):
            kept = None  # FSDP shard: the forward sees a weight all-gathered anew each time
        self.kept, self._stamp = kept, self.weight._version

    @property
    def marked_kept(self) -> int | None:
        """`kept` if the weight has not been modified since it was marked, else None."""
        return self.kept if self._stamp == self.weight._version else None

    def forward(self, x: Tensor, bias_grad_elsewhere: bool = False) -> Tensor:
        """x @ Wᵀ + b. With `bias_grad_elsewhere` the bias is added as usual but its gradient
        is left to whoever consumes the output: an AbsTopK that was handed the bias computes
        it while writing the output's gradient, saving the column sums' own pass over it
        (`sparse_tf.sparsity.AbsTopK.selects`)."""
        bias = self.bias
        if bias_grad_elsewhere and bias is not None:
            bias = bias.detach()
        # Under torch.compile the products stay on cuBLAS, inside the compiled graph: the
        # sparse path keys its formats on the weight's version counter, which would make the
        # compiler recompile after every optimizer step. `is_compiling()` is tested first so
        # that the compiler never reads `kept`: an int attribute it reads becomes a guard, and
        # the L0 anneal changes `kept` at every step (a recompile per step, then eager).
        if torch.compiler.is_compiling():
            return F.linear(x, self.weight, bias)
        if _capturing(x):
            if _RECORDER is None:  # nobody will refresh the formats before a replay
                return F.linear(x, self.weight, bias)
            return _RECORDER.product(self, x, bias)
        if self.kept is None:
            return F.linear(x, self.weight, bias)
        return kernels.sparse_linear(x, self.weight, bias, self.marked_kept, self._formats)


def _capturing(x: Tensor) -> bool:
    """Whether x's CUDA stream is being captured into a CUDA graph."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


@dataclass(frozen=True)
class _Product:
    """One SparseLinear call recorded in a capture: what its replays assume."""

    layer: SparseLinear
    tokens: int
    dtype: torch.dtype
    plan: kernels.SpmmPlan
    reads: kernels.SpmmPlan  # the formats the capture reads (dX's only with a backward)
    formats: tuple[int, ...]  # their tensors' data pointers


_RECORDER: GraphedProducts | None = None
"""The recorder of the capture under way (captures run one at a time, on one thread)."""


class GraphedProducts:
    """The sparse products of a model's `SparseLinear` layers inside a CUDA graph captured
    over the model (a micro-batch's forward and backward), kept valid across replays.

        products = GraphedProducts()
        ...  # eager warm-up run(s) of the same computation: formats built, verdicts measured
        with products.recording(), torch.cuda.graph(graph):
            run()
        ...
        if not products.refresh():  # before every replay
            recapture()
        graph.replay()

    Under `recording()` each layer computes with the plan that an eager call makes now
    (`kernels.known_plan`: from what the warm-up measured; a capture cannot measure) and reads
    its sparse formats, already built by the warm-up for the current weight. `refresh()`
    rebuilds every recorded layer's formats for its current weight, in place (their builds
    are CUDA graphs that refill the same tensors), and says whether the capture still holds:
    it no longer does when a layer's plan has changed (the L0 anneal crossing a crossover, a
    density not yet verified, a weight modified without being marked again) or its formats
    had to move (`kept` outgrew their capacity). Layers planned dense read the live weight,
    so they need nothing. With the format builds not graphed (SPARSE_TF_CUDA_GRAPHS=0) every
    product is captured on cuBLAS."""

    def __init__(self) -> None:
        self._products: list[_Product] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record the sparse products of the capture made inside this context."""
        global _RECORDER
        if _RECORDER is not None:
            raise SparseTFError("GraphedProducts: captures cannot be nested")
        self._products, _RECORDER = [], self
        try:
            yield
        finally:
            _RECORDER = None

    def product(self, layer: SparseLinear, x: Tensor, bias: Tensor | None) -> Tensor:
        """`layer(x)` inside the capture (with `bias`: the layer's, or it detached), recorded."""
        tokens, dtype = x.numel() // layer.in_features, kernels.compute_dtype(x)
        plan = self._plan(layer, tokens, dtype)
        if plan is None:
            raise SparseTFError(
                f"GraphedProducts: the sparse product of {layer.in_features} -> "
                f"{layer.out_features} on {tokens} tokens was not measured before the capture "
                "(run the same computation eagerly first)"
            )
        y = kernels.sparse_linear(x, layer.weight, bias, layer.marked_kept, layer._formats, plan)
        # The formats the capture reads: dX's only where the backward will run.
        dx = plan.dx and x.requires_grad and torch.is_grad_enabled()
        reads = kernels.SpmmPlan(forward=plan.forward, dx=dx)
        formats = self._formats(layer, dtype, reads) if reads.any else ()
        self._products.append(_Product(layer, tokens, dtype, plan, reads, formats))
        return y

    def refresh(self) -> bool:
        """Bring the recorded layers' formats up to date with their weights (GPU work queued
        on the current stream, before the replay); False if the capture no longer holds."""
        for p in self._products:
            plan = self._plan(p.layer, p.tokens, p.dtype)
            if plan != p.plan:
                return False
            if p.reads.any and self._formats(p.layer, p.dtype, p.reads) != p.formats:
                return False
        return True

    @staticmethod
    def _plan(layer: SparseLinear, tokens: int, dtype: torch.dtype) -> kernels.SpmmPlan | None:
        if not kernels.graphs.enabled():
            return kernels.DENSE
        kept = layer.marked_kept
        return kernels.known_plan(layer.weight.device, tokens, layer.weight, kept, dtype)

    @staticmethod
    def _formats(
        layer: SparseLinear, dtype: torch.dtype, reads: kernels.SpmmPlan
    ) -> tuple[int, ...]:
        """The layer's formats that `reads` names, built for its current weight: their
        tensors' addresses."""
        kept = layer.marked_kept
        assert kept is not None  # a sparse plan needs a marked weight
        out: list[int] = []
        for transpose, used in ((False, reads.forward), (True, reads.dx)):
            if used:
                csr = layer._formats.get(layer.weight, kept, dtype, transpose)
                out += [csr.ptr.data_ptr(), csr.cols.data_ptr(), csr.vals.data_ptr()]
        return tuple(out)
