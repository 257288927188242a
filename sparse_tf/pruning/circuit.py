"""A pruned circuit: its nodes, its edges and the evidence that it does the task.

`circuit.json` (written by `sparse-tf prune`) is `Circuit.to_dict()`:

    task, target_loss, reached_target   (on the val split, where the size is chosen)
    nodes            {hook name: [channel indices]}   the circuit; every other node is ablated
    n_nodes, n_total_nodes
    n_edges, edges_by_type, edges_by_layer   nonzero weight entries between kept nodes (the
                     paper's count)
    n_resid_links, resid_links_by_layer      residual write -> later read links of the same
                     channel between kept nodes: reported apart, never in n_edges
    logit_scale      the calibration fitted on the val split
    sufficiency      test-split scores of the circuit alone (`loss` calibrated,
                     `loss_uncalibrated`, `meets_target`)
    necessity        test-split scores of the full model with the circuit's nodes ablated
                     (uncalibrated)
    full_model       test-split scores of the unpruned model (`loss` uncalibrated;
                     `loss_calibrated` with its own scale `logit_scale` fitted on val: the
                     figure to set beside the circuit's calibrated loss)
    all_ablated      test-split scores with every node ablated (the means alone)
    loss_vs_k        [[k, val loss], ...]  the chosen run's top-k circuits, k ascending
    trials           the hyperparameter search: one entry per mask-training run
    config, model, run
    pairs_file       where the pairs came from with `--pairs FILE`: {file (as given), sha256
                     of its bytes, task, and its pairs per split}; null for a built-in task
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import CIRCUIT_FILE
from sparse_tf.io import read_json, write_json


class CircuitError(SparseTFError):
    """A circuit file that is missing, malformed or does not fit the model."""


@dataclass(frozen=True)
class Circuit:
    task: str
    target_loss: float
    reached_target: bool
    nodes: dict[str, list[int]]
    n_nodes: int
    n_total_nodes: int
    n_edges: int
    edges_by_type: dict[str, int]
    edges_by_layer: dict[str, dict[str, int]]
    logit_scale: float
    sufficiency: dict[str, Any]
    necessity: dict[str, Any]
    full_model: dict[str, Any]
    all_ablated: dict[str, Any]
    loss_vs_k: list[list[float]]
    # Defaults: circuit.json files written before residual links were counted apart still load
    # (so that --overwrite recognises them); their n_edges includes the links.
    n_resid_links: int = 0
    resid_links_by_layer: dict[str, int] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    pairs_file: dict[str, Any] | None = None

    @property
    def met_target(self) -> bool:
        """Whether the circuit reaches the target loss: on the val split, where its size was
        chosen, and on the held-out test split (calibrated). `sparse-tf prune` exits with
        status 3 when it does not."""
        suff = self.sufficiency
        on_test = suff.get("meets_target", suff["loss"] <= self.target_loss)
        return self.reached_target and bool(on_test)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "circuit") -> Circuit:
        if not isinstance(data, dict):
            raise CircuitError(f"{source}: not a circuit (a JSON object is expected)")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if _required(f)}
        if missing := sorted(required - set(data)):
            raise CircuitError(f"{source}: missing field(s) {missing}")
        if unknown := sorted(set(data) - names):
            raise CircuitError(f"{source}: unknown field(s) {unknown}")
        nodes = data["nodes"]
        if not isinstance(nodes, dict) or not all(isinstance(v, list) for v in nodes.values()):
            raise CircuitError(f"{source}: 'nodes' must map hook names to lists of integers")
        for name, indices in nodes.items():
            bad = [i for i in indices if type(i) is not int or i < 0]
            if bad or len(set(indices)) != len(indices):
                what = f"{bad[0]!r} is not a channel index" if bad else "repeats a channel"
                raise CircuitError(f"{source}: nodes[{name!r}]: {what}")
        return cls(**data)

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / CIRCUIT_FILE, self.to_dict())

    def summary(self) -> str:
        """A few lines: size, edges by type, sufficiency and necessity. A calibrated loss is set
        beside the uncalibrated one everywhere: calibration alone can bring any circuit down to
        at most chance (0.693), so it is compared with the full model's calibrated loss."""
        suff, nec, full = self.sufficiency, self.necessity, self.full_model
        types = ", ".join(f"{k} {v}" for k, v in self.edges_by_type.items() if v)
        met = "meets" if suff.get("meets_target", suff["loss"] <= self.target_loss) else "MISSES"
        val = "" if self.reached_target else "; the val split missed it too, at every size"
        calibrated = (  # absent from files written before it was measured
            f"{full['loss_calibrated']:.4f} calibrated (scale {full['logit_scale']:.3f}), "
            if "loss_calibrated" in full
            else ""
        )
        # Said first: a missed target is what a reader (or a log's first line) must not miss.
        missed = []
        if not self.met_target:
            where = (
                f"on the test split (loss {suff['loss']:.4f} calibrated)"
                if self.reached_target
                else "on the val split, at every size (it is the best one tried)"
            )
            target = self.target_loss
            missed = [f"TARGET MISSED: the circuit misses the target loss {target} {where}"]
        return "\n".join(
            [
                *missed,
                f"circuit for {self.task}: {self.n_nodes} of {self.n_total_nodes} nodes, "
                f"{self.n_edges} edges ({types or 'none'}); "
                f"{self.n_resid_links} residual links (not edges)",
                f"sufficiency (test): loss {suff['loss']:.4f} calibrated ({met} target "
                f"{self.target_loss}; logit scale {self.logit_scale:.3f}{val}), "
                f"{suff['loss_uncalibrated']:.4f} uncalibrated; accuracy {suff['accuracy']:.3f}",
                f"necessity (test): circuit ablated -> loss {nec['loss']:.4f} uncalibrated, "
                f"accuracy {nec['accuracy']:.3f} (chance 0.693 / 0.5)",
                f"full model (test): loss {calibrated}{full['loss']:.4f} uncalibrated; "
                f"accuracy {full['accuracy']:.3f}; all nodes ablated: loss "
                f"{self.all_ablated['loss']:.4f}",
                f"nodes by site: {self.nodes_by_site() or 'none'}",
            ]
        )

    def nodes_by_site(self) -> str:
        """`blocks.0.attn.hook_q 3, ...`: the kept nodes per site, by the hook names that
        `model.hooks` and `run_with_cache` take (circuit.json's `nodes` keys; the viewer's row
        labels), in the file's order (forward order for `sparse-tf prune`'s)."""
        return ", ".join(f"{name} {len(c)}" for name, c in self.nodes.items() if c)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def load_circuit(path: str | Path) -> Circuit:
    """Read `circuit.json` from a `sparse-tf prune` output folder (or the file itself)."""
    path = Path(path)
    file = path / CIRCUIT_FILE if path.is_dir() else path
    try:
        data = read_json(file)
    except ValueError as e:
        raise CircuitError(str(e)) from None
    return Circuit.from_dict(data, source=str(file))
