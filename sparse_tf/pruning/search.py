"""Learned node pruning: the smallest circuit that still does a task (Gao et al. 2025, 2.2, A.5).

One pruning run (a *trial*):

1. Train node masks (`NodeMasks`) on task pairs of the train split: minimise the task loss of
   the mean-ablated model plus `k_coef` · (number of active nodes) with AdamW (weight decay
   1e-3, β2 = 1 − 0.05), the learning rate decayed linearly to zero, no warmup, τ clamped to
   [−1, 1] after every step.
2. Rank nodes by τ and bisect on k, the number of top-ranked nodes kept, for the smallest
   circuit whose task loss on the val split reaches the target (0.15). The loss at every k is
   measured after a 16-step LBFGS fit of a logit scale (a shift does nothing under a softmax).
   The trained mask's own size only seeds the search: the range doubles upwards from it until
   the target is met, then bisection finds the smallest k below.

`prune` runs the trials of an Optuna study (`sparse_tf.pruning.study`: TPE over the Table 2
parameters, the first trial at the centre, in memory or in a resumable SQLite file shared by
parallel workers) until it holds `budget` completed trials, and keeps the smallest circuit that
meets the target (fewest edges). Then it validates that circuit on the test split: sufficiency
(only the circuit, the rest mean-ablated), necessity (the full model with the circuit
mean-ablated) and the loss-vs-k curve. `prune_targets` runs the searches of several target
losses with each trial's mask training shared (neither step 1 nor the loss at a size depends
on the target).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.data.tokenizer import eot_id
from sparse_tf.model import GPT
from sparse_tf.pruning.circuit import Circuit
from sparse_tf.pruning.config import PruneConfig
from sparse_tf.pruning.edges import count_edges
from sparse_tf.pruning.masks import (
    NodeMasks,
    gate_nodes,
    keep_gates,
    mean_ablation,
    top_k_gates,
)
from sparse_tf.pruning.nodes import NodeSite, node_sites
from sparse_tf.pruning.study import (
    Hyper,
    completed,
    enqueue_centre,
    hyper_of,
    model_fingerprint,
    objective_value,
    open_study,
    study_name,
    trial_seed,
)
from sparse_tf.tasks import (
    PairsFile,
    PairSource,
    Split,
    TaskScore,
    candidate_logits,
    contrast_loss,
    encode_pairs,
    score,
)
from sparse_tf.tasks.encoding import TaskBatch, batches
from sparse_tf.tasks.metrics import last_logits

Log = Callable[[str], None]


@dataclass(frozen=True)
class Trial:
    """One mask-training run and the circuit bisected from it."""

    hyper: Hyper
    trained_k: int
    """Nodes with τ > 0 when training ended."""
    k: int
    """Nodes of the bisected circuit (the smallest meeting the target, else the best tried)."""
    reached: bool
    """Whether the circuit meets the target loss on the val split."""
    val_loss: float
    """The circuit's task loss on the val split, calibrated (what the target is met on)."""
    val_loss_uncalibrated: float
    """The same without the logit scale."""
    n_edges: int
    seconds: float
    reused_masks: bool = False
    """Whether the masks came from the same run made for another target of the same
    `prune_targets` call (then `seconds` is the bisection's alone)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(**{**data, "hyper": Hyper(**data["hyper"])})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Trial:
        """A completed trial from its entry in circuit.json's `trials` (which adds the
        trial's number, state and seed)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in record.items() if k in fields})

    @property
    def rank(self) -> tuple[bool, int, int, float]:
        """Sort key, best first: meets the target, then fewest edges, nodes, lowest loss."""
        return (not self.reached, self.n_edges, self.k, self.val_loss)


def kept_trial(results: Mapping[int, Trial]) -> int:
    """The number of the trial a search keeps of its completed `results` (number -> trial):
    the best by `Trial.rank`, the earliest of equals."""
    return min(results, key=lambda n: (results[n].rank, n))


def kept_within(records: Sequence[Mapping[str, Any]], budget: int) -> Trial:
    """The trial a search with `budget` completed trials would have kept, read off the trial
    records (circuit.json's `trials`) of a search with at least that budget: its first `budget`
    completed trials by number. With one worker this is exactly what the smaller search
    keeps, since a trial's parameters (the study's seeded sampler) and seed depend only on the
    trials before it; with parallel workers, the trials that happened to be created first."""
    if budget < 1:
        raise ValueError(f"budget {budget}: must be >= 1")
    done = sorted((r for r in records if r.get("state") == "COMPLETE"), key=lambda r: r["number"])
    if not done:
        raise ValueError("no completed trial in the records")
    results = {r["number"]: Trial.from_record(r) for r in done[:budget]}
    return results[kept_trial(results)]


class CircuitLoss(NamedTuple):
    loss: float
    """Mean task loss per prompt, after the logit scale (1.0 when calibration is off)."""
    se: float
    """Its standard error over prompts."""
    scale: float
    uncalibrated: float
    """Mean task loss per prompt of the raw logits."""


class MaskRun:
    """One mask-training run's masks, their node ranking, and the val loss of every circuit
    size measured on that ranking."""

    def __init__(self, masks: NodeMasks) -> None:
        self.masks = masks
        self.ranking = masks.ranking()  # [n_nodes] flat node indices, highest τ first
        self.measured: dict[int, CircuitLoss] = {}

    def losses(self) -> dict[int, float]:
        """Circuit size -> calibrated val loss, for every size measured so far."""
        return {k: m.loss for k, m in self.measured.items()}


class Pool:
    """Every prompt of one split, right-padded once; `batch(rows)` trims to the longest row."""

    def __init__(
        self, model: GPT, tok: Tokenizer, task: PairSource, n: int, seed: int, split: Split
    ):
        encoded = encode_pairs(task.pairs(n, seed, split), tok)
        # A file's split may hold fewer than n pairs (`PairsFile.pairs` gives what it has).
        self.n_pairs = len(encoded) // 2
        device = next(model.parameters()).device
        batch = next(batches(encoded, self.n_pairs, model.cfg.n_ctx, eot_id(tok)))
        self.host_lengths = batch.lengths  # [2n] on the CPU: trimming needs no device sync
        self.all = batch.to(device)

    def batch(self, rows: Tensor) -> TaskBatch:
        width = int(self.host_lengths[rows].max())
        rows = rows.to(self.all.tokens.device)
        lengths = self.all.lengths[rows]
        return TaskBatch(
            self.all.tokens[rows, :width],
            lengths,
            self.all.targets[rows],
            self.all.alternatives[rows],
        )

    def chunks(self, rows_per_chunk: int) -> Iterator[TaskBatch]:
        n = len(self.all.lengths)
        for start in range(0, n, rows_per_chunk):
            yield self.batch(torch.arange(start, min(n, start + rows_per_chunk)))


class Pruner:
    """A frozen model, its node sites and ablation means, and the task's three pools."""

    def __init__(
        self,
        model: GPT,
        tok: Tokenizer,
        task: PairSource,
        sites: Sequence[NodeSite],
        means: Mapping[str, Tensor],
        cfg: PruneConfig,
        *,
        amp: bool = False,
        log: Log | None = None,
    ) -> None:
        self.model, self.task, self.sites, self.means = model, task, list(sites), means
        self.cfg, self.amp, self.log = cfg, amp, log or (lambda _: None)
        self.train = Pool(model, tok, task, cfg.n_train, cfg.seed, "train")
        self.val = Pool(model, tok, task, cfg.n_val, cfg.seed, "val")
        self.test = Pool(model, tok, task, cfg.n_test, cfg.seed, "test")
        # Mask-training runs by (hyperparameters, seed): neither the masks nor the val loss of
        # a size cut from their ranking depends on the target loss, so the searches of
        # several targets (`prune_targets`) share them.
        self._runs: dict[tuple[Hyper, int], MaskRun] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_nodes(self) -> int:
        return sum(s.width for s in self.sites)

    # -- measuring a circuit -------------------------------------------------------------

    @torch.no_grad()
    def pair_logits(self, pool: Pool, gates: Mapping[str, Tensor] | None) -> Tensor:
        """[2n, 2] candidate logits of every prompt of `pool` (rows a0, b0, a1, ...), with the
        nodes whose gate is 0 mean-ablated (`gates` None: the full model)."""
        out = []
        for batch in pool.chunks(256):
            with self._autocast(), self._ablated(gates):
                out.append(candidate_logits(last_logits(self.model, batch), batch))
        return torch.cat(out).cpu()

    def circuit_loss(self, pool: Pool, gates: Mapping[str, Tensor] | None) -> CircuitLoss:
        """The task loss of a circuit on `pool`, calibrated and not."""
        logits = self.pair_logits(pool, gates)
        scale = fit_logit_scale(logits) if self.cfg.calibrate else 1.0
        per_prompt = -torch.log_softmax(logits.double() * scale, dim=-1)[:, 0]  # [2n]
        se = float(per_prompt.std() / math.sqrt(len(per_prompt))) if len(per_prompt) > 1 else 0.0
        plain = float(-torch.log_softmax(logits.double(), dim=-1)[:, 0].mean())
        return CircuitLoss(float(per_prompt.mean()), se, scale, plain)

    def scores(self, pool: Pool, gates: Mapping[str, Tensor] | None, scale: float) -> TaskScore:
        """Loss, accuracy and margins of a circuit on `pool`, its logits times `scale`."""
        return score(self.task.name, self.pair_logits(pool, gates) * scale)

    # -- mask training -------------------------------------------------------------------

    def train_masks(self, hyper: Hyper, seed: int) -> NodeMasks:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed)
        masks = NodeMasks(
            self.sites,
            init_bias=hyper.init_bias,
            init_noise=hyper.init_noise,
            temperature=hyper.temperature,
            device=self.device,
            generator=gen,
        )
        opt = torch.optim.AdamW(
            masks.parameters(),
            lr=hyper.lr,
            betas=(0.9, 1.0 - hyper.inv_beta2),
            weight_decay=hyper.weight_decay,
        )
        order = _pair_order(self.train.n_pairs, cfg.batch_pairs, seed)
        report = max(1, hyper.steps // 5)
        with _frozen(self.model):
            self._optimise(masks, opt, order, hyper, report)
        return masks

    def _optimise(
        self,
        masks: NodeMasks,
        opt: torch.optim.Optimizer,
        order: Iterator[Tensor],
        hyper: Hyper,
        report: int,
    ) -> None:
        cfg = self.cfg
        for step in range(hyper.steps):
            for group in opt.param_groups:  # linear decay to zero, no warmup
                group["lr"] = hyper.lr * (1.0 - step / hyper.steps)
            pairs = next(order)
            rows = torch.stack((2 * pairs, 2 * pairs + 1), dim=1).flatten()  # a and b of each
            batch = self.train.batch(rows)
            gates = masks.gates()
            with self._autocast(), mean_ablation(self.model, gates, self.means):
                logits = last_logits(self.model, batch)
            task_loss = contrast_loss(candidate_logits(logits, batch))
            active = sum(g.sum() for g in gates.values())
            loss = task_loss + hyper.k_coef * active
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(masks.parameters(), cfg.grad_clip)
            opt.step()
            masks.clamp_()
            if (step + 1) % report == 0 or step + 1 == hyper.steps:
                self.log(
                    f"  step {step + 1}/{hyper.steps}: task loss {task_loss.item():.4f}, "
                    f"active nodes {int(active)}"
                )

    # -- one trial -----------------------------------------------------------------------

    def trial(self, hyper: Hyper, seed: int, target: float) -> tuple[Trial, MaskRun]:
        """Train masks with `hyper` (or take the run already made with the same hyper and
        seed), then bisect the smallest circuit meeting `target`."""
        start = time.perf_counter()
        reused = (hyper, seed) in self._runs
        if not reused:
            self._runs[hyper, seed] = MaskRun(self.train_masks(hyper, seed))
        run = self._runs[hyper, seed]

        visited: dict[int, float] = {}  # this bisection's sizes (the run's may hold more)

        def bound_at(k: int) -> float:
            """The val loss of the top-k circuit plus `margin_se` standard errors."""
            m = self.loss_at(run, k)
            visited[k] = m.loss
            return m.loss + self.cfg.margin_se * m.se

        trained_k = run.masks.n_active()
        k = smallest_k(bound_at, self.n_nodes, target, start=max(1, trained_k))
        reached = k is not None
        if k is None:  # the target is out of reach: keep the best size this search measured
            k = min(visited, key=lambda j: (visited[j], j))
        nodes = gate_nodes(top_k_gates(self.sites, run.ranking, k))
        edges = count_edges(self.model, self.sites, nodes).total
        seconds = time.perf_counter() - start
        m = self.loss_at(run, k)
        t = Trial(hyper, trained_k, k, reached, m.loss, m.uncalibrated, edges, seconds, reused)
        return t, run

    def loss_at(self, run: MaskRun, k: int) -> CircuitLoss:
        """The val loss of the circuit of `run`'s k top-ranked nodes (measured once per run)."""
        if k not in run.measured:
            gates = top_k_gates(self.sites, run.ranking, k, self.device)
            run.measured[k] = self.circuit_loss(self.val, gates)
        return run.measured[k]

    # -- helpers -------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _ablated(self, gates: Mapping[str, Tensor] | None) -> contextlib.AbstractContextManager:
        if gates is None:
            return contextlib.nullcontext()
        return mean_ablation(self.model, gates, self.means)


@contextlib.contextmanager
def _frozen(model: GPT) -> Iterator[None]:
    """The model's parameters need no gradient while masks train (activations still carry
    one to τ); their flags are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _pair_order(n_pairs: int, batch_pairs: int, seed: int) -> Iterator[Tensor]:
    """Batches of pair indices: a fresh seeded permutation every epoch, no pair twice in one
    batch (a batch larger than the pool takes the whole pool)."""
    rng = np.random.default_rng(seed)
    size = min(batch_pairs, n_pairs)
    buffer: list[int] = []
    while True:
        while len(buffer) < size:
            buffer.extend(rng.permutation(n_pairs).tolist())
        yield torch.tensor(buffer[:size])
        buffer = buffer[size:]


def smallest_k(
    loss_at: Callable[[int], float], n: int, target: float, start: int = 1
) -> int | None:
    """The smallest k in [0, n] with `loss_at(k) <= target`, assuming the loss falls as k
    grows; None when even `loss_at(n)` misses the target.

    The search starts at `start` (the trained mask's size): it doubles k until the target is
    met, then bisects between the last miss and the first hit, so its cost is logarithmic in
    the distance from `start`, not in n.
    """
    if loss_at(0) <= target:
        return 0
    lo, hi = 0, max(1, min(start, n))  # loss_at(lo) misses the target
    while loss_at(hi) > target:
        if hi == n:
            return None
        lo, hi = hi, min(2 * hi, n)
    while hi - lo > 1:  # loss_at(lo) misses, loss_at(hi) meets
        mid = (lo + hi) // 2
        if loss_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def fit_logit_scale(pair_logits: Tensor, steps: int = 16) -> float:
    """The positive scale s minimising the task loss of s · logits (16 LBFGS steps on log s).

    A shift of all logits cancels in the two-candidate softmax, so only the scale matters. A
    circuit that ranks the candidates well but with too small (or too large) a margin is
    calibrated; a scale cannot flip its decisions (s > 0). Returns 1.0 if the fit does not
    beat s = 1.
    """
    logits = pair_logits.detach().double().cpu()
    log_s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_s], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = contrast_loss(logits * log_s.exp())
        loss.backward()
        return loss

    opt.step(closure)
    s = float(log_s.detach().exp())
    with torch.no_grad():
        fitted, plain = contrast_loss(logits * s), contrast_loss(logits)
    return s if math.isfinite(s) and fitted < plain else 1.0


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One entry of circuit.json's `trials`: the trial's number and state, and the result of a
    completed one (hyper, trained_k, k, reached, losses, n_edges, seconds)."""
    record: dict[str, Any] = {"number": t.number, "state": t.state.name}
    if "trial" in t.user_attrs:
        record.update(t.user_attrs["trial"], seed=t.user_attrs["seed"])
    else:  # failed or still running (another worker's, or killed): its parameters only
        record["hyper"] = dict(t.params)
    return record


def log_spaced(n: int, points: int) -> list[int]:
    """About `points` distinct integers from 0 to n, evenly spaced on a log scale."""
    if n <= 0:
        return [0]
    grid = np.unique(np.round(np.geomspace(1, n, max(2, points))).astype(int))
    return [0, *grid.tolist()]


@dataclass(frozen=True)
class PruneResult:
    circuit: Circuit
    scores: dict[str, Tensor]
    """τ of every node in the kept run (hook name → [width]), the ranking the circuit is cut
    from."""


def prune(
    model: GPT,
    tok: Tokenizer,
    task: PairSource,
    means: Mapping[str, Tensor],
    cfg: PruneConfig = PruneConfig(),
    *,
    study: str | Path | None = None,
    amp: bool = False,
    log: Log | None = None,
) -> PruneResult:
    """Find the smallest circuit of `model` for `task` (see the module docstring).

    Args:
        model: the model, on the device to prune on; its parameters are not changed.
        tok: its tokenizer (raises `TaskTokenError` if it cannot express the task).
        means: ablation means for every node site (`ablation_means`), on the model's device.
        study: an SQLite file for the search's Optuna study (created if missing): resumable,
            shareable by parallel workers. None: a study in memory.
        amp: bf16 autocast for the forward passes (GPU).
        log: called with progress lines.
    """
    searches = prune_targets(
        model, tok, task, means, cfg, [cfg.target_loss], study=study, amp=amp, log=log
    )
    ((_, result),) = searches
    return result


def prune_targets(
    model: GPT,
    tok: Tokenizer,
    task: PairSource,
    means: Mapping[str, Tensor],
    cfg: PruneConfig,
    targets: Sequence[float],
    *,
    study: str | Path | None = None,
    amp: bool = False,
    log: Log | None = None,
) -> Iterator[tuple[float, PruneResult]]:
    """`prune` at each of `targets` (target losses, in place of `cfg.target_loss`) in turn,
    with the mask training shared: (target loss, result) as each search ends.

    Each target has its own search (its own Optuna study, as `prune` would run it), and each
    gives the circuit `prune` would. But a trial's masks, and the val loss of every size cut
    from their ranking, do not depend on the target: a trial whose hyperparameters and seed
    an earlier target's search already ran takes that run's masks and measured losses and
    only bisects again. The searches draw the same trials (the centre first; then TPE's
    random start-up samples, the same at every target from one sampler seed) until TPE starts
    to model each target's results, so at a small budget each trial's masks are trained once
    instead of once per target. Arguments as in `prune`.
    """
    if not targets:
        raise ValueError("prune_targets: no target loss given")
    # Each target checked before any work: a ConfigError naming it.
    configs = {t: dataclasses.replace(cfg, target_loss=t) for t in targets}
    return _searches(model, tok, task, means, cfg, configs, study, amp, log or (lambda _: None))


def _searches(
    model: GPT,
    tok: Tokenizer,
    task: PairSource,
    means: Mapping[str, Tensor],
    cfg: PruneConfig,
    configs: dict[float, PruneConfig],
    study: str | Path | None,
    amp: bool,
    log: Log,
) -> Iterator[tuple[float, PruneResult]]:
    sites = node_sites(model.cfg, cfg.final_resid)
    pruner = Pruner(model, tok, task, sites, means, cfg, amp=amp, log=log)
    for target, target_cfg in configs.items():
        yield target, _search(pruner, target_cfg, study, log)


def _search(pruner: Pruner, cfg: PruneConfig, study: str | Path | None, log: Log) -> PruneResult:
    """`prune`'s search at `cfg.target_loss` with `pruner`, and the kept circuit validated."""
    model, task, sites = pruner.model, pruner.task, pruner.sites
    centre = Hyper(
        k_coef=cfg.k_coef,
        lr=cfg.lr,
        steps=cfg.steps,
        weight_decay=cfg.weight_decay,
        inv_beta2=cfg.inv_beta2,
        init_bias=cfg.init_bias,
        init_noise=cfg.init_noise,
        temperature=cfg.temperature,
    )
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in ("budget", "curve_points")}
    key = {"task": task.name, **fixed}
    if isinstance(task, PairsFile):  # a file's pairs: its content is the task (built-in keys stay)
        key["pairs_sha256"] = task.sha256
    name = study_name(task.name, model_fingerprint(model), key)
    optuna_study = open_study(study, name, cfg.seed)
    enqueue_centre(optuna_study, centre)
    ran: dict[int, tuple[Trial, MaskRun]] = {}  # by this process

    def objective(ot: optuna.trial.Trial) -> float:
        hyper = hyper_of(ot, centre)
        log(
            f"trial {ot.number} ({len(completed(optuna_study)) + 1} of {cfg.budget}): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in dataclasses.asdict(hyper).items())
        )
        seed = trial_seed(ot, cfg.seed)
        ot.set_user_attr("seed", seed)
        ran[ot.number] = pruner.trial(hyper, seed, cfg.target_loss)
        trial = ran[ot.number][0]
        ot.set_user_attr("trial", trial.to_dict())
        met = "" if trial.reached else f" (target {cfg.target_loss} missed)"
        shared = ", masks of another target's search" if trial.reused_masks else ""
        log(
            f"  trained mask keeps {trial.trained_k} nodes; circuit: {trial.k} nodes, "
            f"{trial.n_edges} edges, val loss {trial.val_loss:.4f}{met} "
            f"[{trial.seconds:.1f} s{shared}]"
        )
        return objective_value(trial.reached, trial.n_edges, trial.val_loss, cfg.target_loss)

    while len(completed(optuna_study)) < cfg.budget:
        optuna_study.optimize(objective, n_trials=1, catch=())
    done = completed(optuna_study)
    if study is not None:
        log(f"study {study} ({name}): {len(done)} completed trials")
    results = {t.number: Trial.from_dict(t.user_attrs["trial"]) for t in done}
    best_number = kept_trial(results)
    if best_number not in ran:  # another worker (or an earlier run) found it: re-run it here
        recorded = results[best_number]
        log(f"re-running trial {best_number} (run elsewhere) for its masks")
        seed = next(t for t in done if t.number == best_number).user_attrs["seed"]
        ran[best_number] = pruner.trial(recorded.hyper, seed, cfg.target_loss)
        again = ran[best_number][0]
        if (again.k, again.n_edges) != (recorded.k, recorded.n_edges):
            log(
                f"  the re-run gave {again.k} nodes, {again.n_edges} edges (recorded: "
                f"{recorded.k}, {recorded.n_edges}; a different device or library version)"
            )
    trial, run = ran[best_number]
    trials = [_trial_record(t) for t in optuna_study.get_trials(deepcopy=False)]

    # The loss-vs-k curve of the kept run: the sizes measured on it (the bisections', also
    # other targets' when shared) and a log-spaced grid.
    for k in log_spaced(pruner.n_nodes, cfg.curve_points):
        pruner.loss_at(run, k)
    losses = run.losses()

    device = pruner.device
    gates = top_k_gates(sites, run.ranking, trial.k, device)
    nodes = gate_nodes(gates)
    scale = pruner.loss_at(run, trial.k).scale
    sufficiency = pruner.scores(pruner.test, gates, scale).to_dict()
    sufficiency["loss_uncalibrated"] = pruner.scores(pruner.test, gates, 1.0).loss
    sufficiency["meets_target"] = sufficiency["loss"] <= cfg.target_loss
    # The full model calibrated the same way (its own scale, fitted on val): a calibrated
    # circuit loss is only comparable with this, never with the raw full-model loss.
    full_scale = pruner.circuit_loss(pruner.val, None).scale
    full_model = pruner.scores(pruner.test, None, 1.0).to_dict()
    full_model["loss_calibrated"] = pruner.scores(pruner.test, None, full_scale).loss
    full_model["logit_scale"] = full_scale
    edges = count_edges(model, sites, nodes)
    circuit = Circuit(
        task=task.name,
        target_loss=cfg.target_loss,
        reached_target=trial.reached,
        nodes=nodes,
        n_nodes=trial.k,
        n_total_nodes=pruner.n_nodes,
        n_edges=edges.total,
        edges_by_type=edges.by_type,
        edges_by_layer=edges.by_layer,
        logit_scale=scale,
        sufficiency=sufficiency,
        necessity=pruner.scores(
            pruner.test, keep_gates(sites, nodes, device, invert=True), 1.0
        ).to_dict(),
        full_model=full_model,
        all_ablated=pruner.scores(pruner.test, keep_gates(sites, {}, device), 1.0).to_dict(),
        loss_vs_k=[[k, losses[k]] for k in sorted(losses)],
        n_resid_links=edges.resid_links,
        resid_links_by_layer=edges.resid_links_by_layer,
        trials=trials,
        config=cfg.to_dict(),
    )
    return PruneResult(circuit, run.masks.scores())
