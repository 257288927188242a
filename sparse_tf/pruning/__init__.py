"""Circuit pruning: the smallest set of nodes that still does a task, under mean ablation.

    from sparse_tf.pruning import PruneConfig, prune_model, prune_model_targets
    result = prune_model("runs/tiny-cpu/final", "single_double_quote", out="circuits/quote")
    print(result.circuit.summary())
    # several target losses, the mask training shared: target -> result
    results = prune_model_targets(
        "runs/tiny-cpu/final", "single_double_quote", {0.1: "circuits/q10", 0.3: "circuits/q30"}
    )

The pieces: `nodes` (which channels are nodes), `means` (ablation statistics), `masks` (τ
scores, hard gates, mean ablation through hooks), `search` (mask training, bisection, logit
calibration, the trials), `study` (the hyperparameter search: an Optuna study, in memory or a
resumable SQLite file), `edges` (edges, and residual links apart), `circuit` (circuit.json),
`viewer` (circuit.html) and `run` (a model folder in, an output folder out).
"""

from typing import TYPE_CHECKING

from sparse_tf.lazy import lazy_exports

_LAZY: dict[str, str] = {
    "Circuit": "sparse_tf.pruning.circuit",
    "CircuitError": "sparse_tf.pruning.circuit",
    "load_circuit": "sparse_tf.pruning.circuit",
    "EdgeCount": "sparse_tf.pruning.edges",
    "count_edges": "sparse_tf.pruning.edges",
    "edge_blocks": "sparse_tf.pruning.edges",
    "NodeMasks": "sparse_tf.pruning.masks",
    "gate_nodes": "sparse_tf.pruning.masks",
    "heaviside": "sparse_tf.pruning.masks",
    "keep_gates": "sparse_tf.pruning.masks",
    "mean_ablation": "sparse_tf.pruning.masks",
    "top_k_gates": "sparse_tf.pruning.masks",
    "MeansError": "sparse_tf.pruning.means",
    "ablation_means": "sparse_tf.pruning.means",
    "load_means": "sparse_tf.pruning.means",
    "save_means": "sparse_tf.pruning.means",
    "NodeError": "sparse_tf.pruning.nodes",
    "NodeSite": "sparse_tf.pruning.nodes",
    "check_nodes": "sparse_tf.pruning.nodes",
    "node_sites": "sparse_tf.pruning.nodes",
    "PruneError": "sparse_tf.pruning.run",
    "prune_model": "sparse_tf.pruning.run",
    "prune_model_targets": "sparse_tf.pruning.run",
    "PruneConfig": "sparse_tf.pruning.config",
    "PruneResult": "sparse_tf.pruning.search",
    "fit_logit_scale": "sparse_tf.pruning.search",
    "kept_within": "sparse_tf.pruning.search",
    "prune": "sparse_tf.pruning.search",
    "prune_targets": "sparse_tf.pruning.search",
    "smallest_k": "sparse_tf.pruning.search",
}
"""What this package exports, and the module of each: imported on first use, so that
`sparse_tf.pruning.config` (torch-free: `sparse-tf prune --help`) imports no torch."""

if TYPE_CHECKING:
    from sparse_tf.pruning.circuit import Circuit, CircuitError, load_circuit
    from sparse_tf.pruning.config import PruneConfig
    from sparse_tf.pruning.edges import EdgeCount, count_edges, edge_blocks
    from sparse_tf.pruning.masks import (
        NodeMasks,
        gate_nodes,
        heaviside,
        keep_gates,
        mean_ablation,
        top_k_gates,
    )
    from sparse_tf.pruning.means import MeansError, ablation_means, load_means, save_means
    from sparse_tf.pruning.nodes import NodeError, NodeSite, check_nodes, node_sites
    from sparse_tf.pruning.run import PruneError, prune_model, prune_model_targets
    from sparse_tf.pruning.search import (
        PruneResult,
        fit_logit_scale,
        kept_within,
        prune,
        prune_targets,
        smallest_k,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "Circuit",
    "CircuitError",
    "EdgeCount",
    "MeansError",
    "NodeError",
    "NodeMasks",
    "NodeSite",
    "PruneConfig",
    "PruneError",
    "PruneResult",
    "ablation_means",
    "check_nodes",
    "count_edges",
    "edge_blocks",
    "fit_logit_scale",
    "gate_nodes",
    "heaviside",
    "keep_gates",
    "kept_within",
    "load_circuit",
    "load_means",
    "mean_ablation",
    "node_sites",
    "prune",
    "prune_model",
    "prune_model_targets",
    "prune_targets",
    "save_means",
    "smallest_k",
    "top_k_gates",
]
