"""A micro-batch's forward and backward captured once as a CUDA graph and replayed
(`RunOptions.cuda_graphs`).

An eager micro-batch of the sparse model launches about twice the kernels of its dense twin
(AbsTopK at every site, the fused norms), and the host's launch time then shows between them:
at paper-d1024 the eager step runs a few milliseconds above its GPU time. A CUDA graph replays
the same kernels with one launch. No compiler is involved: the graph holds exactly the eager
kernels, so a graphed run computes what the eager one does.

What a replay needs to stay right:
- Its inputs live in static buffers (token ids, targets, the batch's target count), copied in
  before every replay.
- The gradients exist before the capture and are accumulated into in place: the backward's
  accumulation kernels are recorded against those tensors, so the optimizer must zero them in
  place (`SparseOptimizer.zero_grad(set_to_none=False)`), never replace them. The optimizer
  updates the parameters in place, where the next replay reads them.
- The sparse products are captured with the plan an eager call would follow, reading their
  layers' sparse formats (`sparse_tf.linear.GraphedProducts`); before every replay the formats
  are rebuilt in place for the current weights, and the micro-batch is captured again when a
  layer's plan changes (the L0 anneal crossing a crossover, a density not yet verified) or
  its formats had to move. Models where the crossovers keep every product on cuBLAS (d_model
  1024 at the paper's L0) are never recaptured.
- The objective's loss may use only the micro-batch's inputs, targets and target count
  (`Objective.graphable`), the count as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from sparse_tf.linear import GraphedProducts
from sparse_tf.training.objective import MicroBatch, Objective

WARMUP = 2
"""Eager runs on a side stream before the capture: Triton compiles its kernels and cuBLAS
creates its workspaces there, not inside the graph."""


class GraphedMicroBatch:
    """Forward + backward of `objective.loss(net, ·)` for micro-batches of one shape, captured
    at the first call and replayed at every call after."""

    def __init__(
        self,
        objective: Objective,
        net: nn.Module,
        autocast: Callable[[], AbstractContextManager[None]],
    ) -> None:
        """`autocast`: a new autocast context per call, its cache off (see TrainEnv.autocast)."""
        self.objective, self.net, self.autocast = objective, net, autocast
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.products = GraphedProducts()
        self.captures = 0  # how many times the micro-batch was captured
        self.inputs = self.targets = self.count = self.lm = torch.empty(0)

    def __call__(self, batch: MicroBatch) -> Tensor:
        """Accumulate this micro-batch's gradient into the parameters' .grad; returns its share
        of the batch's mean token loss (a static tensor: read it before the next call)."""
        if self.graph is None or not self.products.refresh():
            self._capture(batch)
        self.inputs.copy_(batch.inputs, non_blocking=True)
        self.targets.copy_(batch.targets, non_blocking=True)
        self.count.fill_(batch.batch_targets)
        assert self.graph is not None
        self.graph.replay()
        return self.lm

    def _run(self) -> Tensor:
        static = MicroBatch(
            inputs=self.inputs,
            targets=self.targets,
            batch_targets=self.count,  # type: ignore[arg-type]  # a tensor: see Objective.graphable
            target_share=0.0,
            window_share=0.0,
        )
        with self.autocast():
            loss = self.objective.loss(self.net, static)
        loss.total.backward()
        return loss.lm.detach()

    def _capture(self, batch: MicroBatch) -> None:
        self.graph, self.lm = None, torch.empty(0)  # a previous capture's memory goes first
        device = batch.inputs.device
        self.inputs = batch.inputs.clone()  # [micro, n_ctx]
        self.targets = batch.targets.clone()  # [micro, n_ctx]
        self.count = torch.tensor(float(batch.batch_targets), device=device)
        grads = [p.grad for p in self.params]
        for p in self.params:  # the warm-up's gradients go to scratch tensors
            p.grad = torch.zeros_like(p)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        # The gradients the graph accumulates into: the step's so far, or zeros.
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g if g is not None else torch.zeros_like(p)
        graph = torch.cuda.CUDAGraph()
        with self.products.recording(), torch.cuda.graph(graph):
            self.lm = self._run()
        self.graph = graph
        self.captures += 1
