"""The hyperparameter search of pruning: an Optuna study (TPE) over the pruning parameters.

The paper tunes each circuit's pruning run with CARBS (32 iterations of 8 parallel jobs), and
says results "improve dramatically" with it. Here an Optuna study plays that part:

- Searched: the mask-training parameters of Table 2 (`SEARCHED`), each on a log scale around
  its centre (the PruneConfig value, by default the paper's centre): the rates, weight decay,
  initial noise and k_coef a decade either side, 1 − β2, the initial bias and the temperature
  a factor of 4-5, the steps a factor of 2. The first trial of a study is the centre itself.
- Objective: the circuit's edges when it meets the target loss on the val split; a circuit that
  misses it scores above every one that meets it (more above the further it misses), so the
  study converges on the smallest circuit that meets the target.
- Storage: in memory, or an SQLite file (`--study PATH.db`). A file makes the study persistent:
  a killed run resumes where it stopped (its unfinished trial is marked failed, through
  Optuna's heartbeat, not counted, and run again with its parameters and seed), and several
  processes (or GPUs) can work on the same study at once. The budget counts the study's
  completed trials, whoever ran them; parallel workers may overshoot it by one trial each.

A study's name encodes everything the objective depends on besides the searched parameters
(task, model weights, target, splits, seeds, the centre), so one file can hold the studies of
several circuits and never mixes trials that are not comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from sparse_tf.errors import SparseTFError


class StudyError(SparseTFError):
    """A study file that cannot be opened or used."""


@dataclass(frozen=True)
class Hyper:
    """The parameters of one mask-training run that the search varies."""

    k_coef: float
    lr: float
    steps: int
    weight_decay: float
    inv_beta2: float
    init_bias: float
    init_noise: float
    temperature: float


SEARCHED: dict[str, tuple[float, float]] = {
    # name: (factor below the centre, factor above), log-uniform between them
    "k_coef": (10.0, 10.0),
    "lr": (10.0, 10.0),
    "steps": (2.0, 2.0),
    "weight_decay": (10.0, 10.0),
    "inv_beta2": (5.0, 5.0),
    "init_bias": (5.0, 5.0),
    "init_noise": (10.0, 10.0),
    "temperature": (4.0, 4.0),
}
# Bounds the factors must not cross: 1 − β2 in (0, 1); τ starts on (bias > 0) and inside the
# clamp [−1, 1]; at least 1 step.
_LIMITS: dict[str, tuple[float, float]] = {
    "inv_beta2": (1e-4, 0.5),
    "init_bias": (1e-4, 1.0),
    "steps": (1, 1_000_000),
}

with warnings.catch_warnings():  # "experimental" since Optuna 2.8, still there in 5
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

HEARTBEAT_S = 30
"""How often a worker marks its running trial alive in a study file; a trial silent for
`GRACE_S` (its worker killed) is marked failed by the next worker that starts a trial."""
GRACE_S = 90


def space(centre: Hyper) -> dict[str, optuna.distributions.BaseDistribution]:
    """The search space around `centre` (see the module docstring)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, (below, above) in SEARCHED.items():
        c = getattr(centre, name)
        lo_limit, hi_limit = _LIMITS.get(name, (0.0, math.inf))
        lo, hi = max(c / below, lo_limit), min(c * above, hi_limit)
        if name == "steps":
            out[name] = optuna.distributions.IntDistribution(
                max(1, math.floor(lo)), max(1, math.ceil(hi), math.floor(lo) + 1), log=True
            )
        elif c == 0:  # e.g. --weight-decay 0: nothing to scale, searched as fixed
            out[name] = optuna.distributions.FloatDistribution(0.0, 0.0)
        else:
            out[name] = optuna.distributions.FloatDistribution(lo, max(hi, lo), log=lo < hi)
    return out


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters (names, shapes and bytes): the study's trials are only
    comparable on the same weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def study_name(task: str, fingerprint: str, fixed: dict[str, Any]) -> str:
    """`task-<hash>`: the hash covers the model, and `fixed` (the config the objective depends
    on, the searched parameters' centre included)."""
    key = json.dumps({"model": fingerprint, **fixed}, sort_keys=True)
    return f"{task}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def open_study(path: str | Path | None, name: str, seed: int) -> optuna.Study:
    """The study `name` in the SQLite file `path` (created if missing; a missing folder or a
    file that is not an SQLite database is a StudyError), or in memory when `path` is None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sparse_tf logs each trial itself
    sampler = optuna.samplers.TPESampler(seed=seed)
    storage: optuna.storages.BaseStorage
    if path is None:
        storage = optuna.storages.InMemoryStorage()
    else:
        path = Path(path)
        check_study_file(path)
        storage = _sqlite_storage(path)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        direction="minimize",
        load_if_exists=True,
    )


def _sqlite_storage(path: Path, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's storage on the SQLite file `path`. Workers started together race to create its
    tables (one finds them created between its check and its CREATE TABLE): a failed attempt is
    retried once the other has finished, and only the last failure is reported."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" since Optuna 2.9 and still the way to detect a
                # killed worker in 5.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    f"sqlite:///{path.resolve()}",
                    # Parallel workers write the same file: wait for its lock, not fail.
                    engine_kwargs={"connect_args": {"timeout": 60}},
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    # A killed worker's trial, once marked failed, is queued again with the
                    # same parameters (and, through `trial_seed`, the same seed).
                    heartbeat_stale_trial_callback=_RETRY,
                )
        except Exception as e:  # SQLAlchemy / Optuna errors: one line naming the file
            if attempt == attempts - 1:
                raise StudyError(
                    f"--study {path}: cannot open ({type(e).__name__}: {e})".splitlines()[0]
                ) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def check_study_file(path: str | Path) -> None:
    """StudyError unless `path` can be a study file: in an existing folder, and new, empty or
    an SQLite database (never another file, which SQLite would refuse or, empty, overwrite)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StudyError(f"--study {path}: its folder does not exist")
    if path.exists() and (not path.is_file() or not _is_sqlite(path)):
        raise StudyError(f"--study {path}: not an SQLite database (an Optuna study file)")


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return head in (b"", b"SQLite format 3\x00")


def hyper_of(trial: optuna.trial.BaseTrial, centre: Hyper) -> Hyper:
    """Sample (or, for an enqueued or finished trial, read) the trial's parameters."""
    dists = space(centre)
    values: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, optuna.distributions.IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return Hyper(**values)


def trial_seed(trial: optuna.trial.Trial, base: int) -> int:
    """`base` plus the trial's number, or the number of the killed trial it retries: a resumed
    study gives the results an uninterrupted one would."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, still there in 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = _RETRY.retried_trial_number(frozen)
    return base + (trial.number if retried is None else retried)


def enqueue_centre(study: optuna.Study, centre: Hyper) -> None:
    """Make the centre the study's first trial (once, whichever worker comes first)."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(asdict(centre), skip_if_exists=True)


def objective_value(reached: bool, n_edges: int, val_loss: float, target: float) -> float:
    """Edges for a circuit that meets the target; above any such circuit otherwise, growing
    with how far the val loss misses (2^62 edges bounds every model here)."""
    if reached:
        return float(n_edges)
    return float(2**62) * (1.0 + max(0.0, val_loss - target))


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE,)
    return study.get_trials(deepcopy=False, states=states)
