"""`SparseLinear`: an nn.Linear that knows how sparse its weight is and uses the sparse matmul.

The weight stays an ordinary dense parameter holding zeros (the optimizer, the projection,
checkpoints and hooks see nothing different). Whoever makes the weight sparse says so with
`mark_sparse(kept)` — the projection does, after every optimizer step — and from then on,
until the weight is next modified in place by anything else, the forward and dX products may
run on the sparse kernel (`sparse_tf.kernels.sparse_linear` decides per shape and density).
A weight changed behind the layer's back (a loaded state dict, an edit) has a new in-place
version, so the layer falls back to cuBLAS until it is marked again: it never trusts a stale
count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from sparse_tf import kernels


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

    def forward(self, x: Tensor) -> Tensor:
        # Under torch.compile the products stay on cuBLAS, inside the compiled graph: the
        # sparse path keys its formats on the weight's version counter, which would make the
        # compiler recompile after every optimizer step. `is_compiling()` is tested first so
        # that the compiler never reads `kept`: an int attribute it reads becomes a guard, and
        # the L0 anneal changes `kept` at every step (a recompile per step, then eager).
        # Under a CUDA graph's capture too (`RunOptions.cuda_graphs`): the formats are
        # host-side state that a replay could not rebuild when the weight changes.
        if torch.compiler.is_compiling() or self.kept is None or _capturing(x):
            return F.linear(x, self.weight, self.bias)
        return kernels.sparse_linear(x, self.weight, self.bias, self.marked_kept, self._formats)


def _capturing(x: Tensor) -> bool:
    """Whether x's CUDA stream is being captured into a CUDA graph."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()
