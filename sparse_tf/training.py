"""Training a (weight-sparse) GPT end to end: data, schedule, logging, checkpoints, export.

    from sparse_tf.presets import preset
    from sparse_tf.training import RunOptions, train

    result = train(preset("tiny-cpu"), RunOptions(out="runs/tiny-cpu"))
    model = sparse_tf.load_model(result.final)

`TrainConfig` fixes the trajectory (model, sparsity, optimizer, data, batch, steps, seed): a
resumed run must match it exactly. `RunOptions` are how this particular process runs (where,
on which device, how often it logs or saves) and may change between resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from sparse_tf._version import __version__
from sparse_tf.bridges.bridge import LOSS_KINDS, BridgeConfig
from sparse_tf.bridges.dense import check_same_tokenizer, dense_tokenizer, load_gpt2
from sparse_tf.bridges.model import BridgedModel, bridge_validation
from sparse_tf.bridges.sites import site_name
from sparse_tf.checkpoint import (
    CheckpointError,
    export_model,
    is_checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    newest_intact,
    save_checkpoint,
)
from sparse_tf.config import Config, ConfigError, check
from sparse_tf.data.pipeline import Data, DataConfig, prepare_data
from sparse_tf.data.ranks import open_on_every_rank
from sparse_tf.data.tokenizer import eot_id, load_tokenizer
from sparse_tf.data.tokens import EpochSampler, Windows, eval_indices
from sparse_tf.devices import device_info, resolve_device
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import (
    FINAL_DIR,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILE,
    SPARSE_MODEL_FILE,
    SUMMARY_FILE,
    WANDB_DIR,
    step_dir_name,
)
from sparse_tf.gpt2 import GPT2Config
from sparse_tf.io import (
    FolderLock,
    read_json,
    remove_leftovers,
    remove_outputs,
    user_entries,
    write_json,
)
from sparse_tf.log import (
    ProgressMode,
    RunLogger,
    SilentLogger,
    WandbMode,
    read_metrics,
    truncate_metrics,
)
from sparse_tf.model import GPT, GPTConfig, target_loss
from sparse_tf.optim import OptimConfig, SparseOptimizer
from sparse_tf.parallel import launch
from sparse_tf.parallel.fsdp import gathered_model, shard_model
from sparse_tf.provenance import git_revision, package_versions, utc_now
from sparse_tf.sparsity import SparsityConfig, count_nonzeros, kept_count
from sparse_tf.tasks import task_tokens
from sparse_tf.trainable import ModelConfig, build_model

RUN_FORMAT = "sparse_tf.run"
"""run.json's "format": what marks a folder as a sparse_tf run."""


T = TypeVar("T")
DistMode = Literal["ddp", "fsdp"]


class TrainingError(SparseTFError):
    """Training cannot start or continue (output folder, resume, diverged loss)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Everything that determines a training run's result. Presets are instances of this."""

    model: ModelConfig
    """The weight-sparse GPT (`GPTConfig`) or a dense Hugging Face GPT-2 (`GPT2Config`)."""
    sparsity: SparsityConfig
    """Weight sparsity; l0 = 1 trains dense (the dense twins of the presets)."""
    optim: OptimConfig = OptimConfig()  # noqa: RUF009 - frozen, so sharing the default is safe
    data: DataConfig = DataConfig()  # noqa: RUF009
    max_steps: int
    """Optimizer steps of the whole run; the LR and L0 schedules span them."""
    batch_size: int
    """Sequences of model.n_ctx tokens per optimizer step."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass (gradient accumulation); None: the whole batch."""
    seed: int = 0
    """Seeds the initialisation and the data order."""
    bridge: BridgeConfig = BridgeConfig()  # noqa: RUF009 - frozen
    """With `bridge.dense` set, train bridges to that dense GPT-2 alongside (`sparse-tf
    bridge`); the loss adds their terms to the model's own."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_steps >= 1, self, "max_steps", "must be >= 1")
        if self.bridge.dense is not None:
            check(isinstance(self.model, GPTConfig), self, "bridge", "bridges a sparse_tf GPT only")
        if isinstance(self.model, GPT2Config):
            check(self.dense, self, "sparsity", "l0 must be 1: a GPT-2 model trains dense")
        check(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            self,
            "micro_batch_size",
            "must be >= 1 (or unset: the whole batch)",
        )
        micro = self.micro
        check(
            1 <= micro <= self.batch_size and self.batch_size % micro == 0,
            self,
            "micro_batch_size",
            f"must divide batch_size={self.batch_size}",
        )

    @property
    def micro(self) -> int:
        return self.batch_size if self.micro_batch_size is None else self.micro_batch_size

    @property
    def dense(self) -> bool:
        return self.sparsity.l0 >= 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions(Config):
    """How this process runs a training config; free to change when resuming."""

    out: str = "runs/tiny-cpu"
    """Run directory: run.json, metrics.jsonl, step-N/ checkpoints, final/ export, wandb/."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint."""
    overwrite: bool = False
    """Replace the run in --out (its checkpoints and export are deleted)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    wandb: WandbMode = "offline"
    """Weights & Biases: 'offline' writes OUT/wandb (sync later), 'online', or 'disabled'."""
    wandb_project: str = "sparse_tf"
    log_every: int = 10
    """Log training metrics every N steps."""
    eval_every: int = 100
    """Validation loss every N steps (on eval_windows windows); 0: only at the end, where the
    whole validation split is always evaluated."""
    eval_windows: int | None = 256
    """Validation windows of the periodic evaluation (spread evenly); None: all of them."""
    ckpt_every: int = 250
    """Write OUT/step-N every N steps (and at the end)."""
    keep_last: int = 2
    """Checkpoints to keep; older ones are deleted once a newer one is complete."""
    progress: ProgressMode = "auto"
    """'bar', 'lines', 'none', or 'auto' (a bar on a terminal, lines otherwise)."""
    dist: DistMode = "ddp"
    """With several ranks (torchrun): 'ddp' keeps a whole model on every rank and averages
    gradients; 'fsdp' shards parameters, gradients and Adam state over the ranks (FSDP2) for
    models too large to replicate. Same global batch and result either way."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.out), self, "out", "must name a folder")
        check(not (self.resume and self.overwrite), self, "overwrite", "excludes --resume")
        check(self.log_every >= 1, self, "log_every", "must be >= 1")
        check(self.eval_every >= 0, self, "eval_every", "must be >= 0")
        check(self.eval_windows is None or self.eval_windows >= 1, self, "eval_windows", ">= 1")
        check(self.ckpt_every >= 1, self, "ckpt_every", "must be >= 1")
        check(self.keep_last >= 1, self, "keep_last", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out: Path
    final: Path
    """The exported model folder (load with `sparse_tf.load_model`)."""
    summary: dict[str, Any]
    """The contents of OUT/summary.json: val loss, tokens/s, wall time, export sizes."""


def train(cfg: TrainConfig, opts: RunOptions) -> TrainResult:
    """Train `cfg` into `opts.out` (resuming or starting fresh); export OUT/final."""
    return _Run(cfg, opts).run()


# ---------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, cfg: TrainConfig, opts: RunOptions) -> None:
        self.cfg, self.opts = cfg, opts
        self.out = Path(opts.out)
        self._lock: FolderLock | None = None  # rank 0's, on --out for the run's life
        self.world = launch.world_from_env()
        self.device = resolve_device(opts.device)
        if self.world.distributed:
            self._check_world()
            if self.device.type == "cuda":  # one GPU per process, by local rank
                self.device = torch.device("cuda", self.world.local_rank)
                torch.cuda.set_device(self.device)
        self.amp = self.device.type == "cuda"  # bf16 autocast on GPU, fp32 on CPU
        self.sharded = self.world.distributed and opts.dist == "fsdp"
        self.bridged = cfg.bridge.dense is not None

    def _check_world(self) -> None:
        """The global batch (batch_size sequences per optimizer step) is the same at any number
        of ranks: each rank takes batch_size / world of it, in micro-batches."""
        cfg, world = self.cfg, self.world.size
        if self.opts.dist == "fsdp" and (not isinstance(cfg.model, GPTConfig) or cfg.bridge.dense):
            raise ConfigError(
                "--dist fsdp: shards plain sparse_tf GPTs only (not hf_gpt2, not bridges); "
                "use --dist ddp"
            )
        if cfg.batch_size % world:
            raise ConfigError(
                f"TrainConfig.batch_size={cfg.batch_size} must be divisible by the {world} ranks"
            )
        per_rank = cfg.batch_size // world
        if per_rank % min(cfg.micro, per_rank):
            raise ConfigError(
                f"TrainConfig.micro_batch_size={cfg.micro} must divide the {per_rank} sequences "
                f"each of the {world} ranks takes per step"
            )

    def _on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; its SparseTFError fails every rank with the same message."""
        result, message = None, None
        if self.world.main:
            try:
                result = fn()
            except SparseTFError as e:
                message = str(e)
                if not self.world.distributed:
                    raise
        message = launch.share_error(self.world, message, self._comm_device)
        if message is not None:
            raise TrainingError(message)
        return result

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # -- setup ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> TrainResult:
        cfg, opts, world = self.cfg, self.opts, self.world
        if world.distributed:  # tokenise before the process group, not inside a collective
            prepare_data(
                cfg.data, cfg.model.vocab_size, cfg.model.n_ctx, reserved_tokens=task_tokens()
            )
        launch.start(world, self.device)
        self._on_main(self._claim_out_dir)  # rank 0 checks and prepares --out for everyone
        run_info, ckpt = self._claimed()

        def load_data(build: bool) -> Data:
            tokenizer = load_tokenizer(ckpt) if ckpt is not None else None
            return prepare_data(
                cfg.data,
                cfg.model.vocab_size,
                cfg.model.n_ctx,
                tokenizer=tokenizer,
                reserved_tokens=task_tokens(),
                build=build,
            )

        data = open_on_every_rank(world, load_data)
        if run_info is not None:
            _check_same_corpus(run_info, data, self.out)
        torch.manual_seed(cfg.seed)
        with torch.device(self.device):  # the same on every rank: same seed, same device type
            model = build_model(cfg.model, eot_id(data.tokenizer))
        if self.sharded:
            shard_model(model, self.device)  # each rank keeps its rows of every tensor
        if self.bridged:
            model = self._bridged(model, data)
            if ckpt is None:  # a new run: bridges start at their targets' means
                first = EpochSampler(len(data.train), cfg.seed).indices(0, cfg.batch_size)
                windows = data.train.get(first)[0]  # the first batch, whole on every rank
                with self._autocast():
                    model.init_biases(model.target_moments(windows, cfg.micro))
        opt = SparseOptimizer(model, cfg.optim, None if cfg.dense else cfg.sparsity, cfg.max_steps)
        state: dict[str, Any] = {"data_position": 0}
        if ckpt is not None:
            state = load_checkpoint(ckpt, model, opt, check_files=False)  # just verified
        start = opt.step_count
        if start >= cfg.max_steps and (self.out / SUMMARY_FILE).is_file():
            final = self.out / FINAL_DIR
            if world.main:
                print(f"{self.out}: already complete; the model is in {final}", file=sys.stderr)
            return TrainResult(
                out=self.out, final=final, summary=read_json(self.out / SUMMARY_FILE)
            )
        if run_info is None:
            run_info = self._new_run_info(data)
        else:
            run_info["resumes"].append(
                {"step": start, "time": utc_now(), "device": device_info(self.device)}
            )
        if world.main:
            write_json(self.out / RUN_FILE, run_info)
            if damaged := truncate_metrics(self.out, start):
                print(
                    f"warning: {self.out / METRICS_FILE}: dropped {damaged} damaged line(s) "
                    "(metrics are a log; the checkpoint is the source of truth)",
                    file=sys.stderr,
                )
        launch.barrier(world)
        self.net = model
        if world.distributed and not self.sharded:
            # Gradients are averaged over ranks in buckets during the backward pass; the
            # parameters (and so the projection's kept sets) stay identical on every rank.
            self.net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Per-site bridge losses summed over the steps of a log window: [4, sites].
        self.bridge_sum = torch.zeros(
            len(LOSS_KINDS), 2 * cfg.model.n_layer + 1, device=self.device
        )
        logger: RunLogger | SilentLogger = SilentLogger()
        if world.main:
            logger = RunLogger(
                self.out,
                total_steps=cfg.max_steps,
                start_step=start,
                wandb=opts.wandb,
                run_id=run_info["id"],
                config=cfg.to_dict(),
                project=opts.wandb_project,
                progress=opts.progress,
            )
        try:
            if ckpt is None:
                logger.message(self._banner(model, data))
            else:
                logger.message(f"resuming {self.out} from {ckpt.name} ({start}/{cfg.max_steps})")
            self._loop(model, opt, data, logger, state["data_position"], run_info)
            result = self._finish(model, data, logger)
            launch.barrier(world)  # rank 0's export is complete before any rank returns
            return result
        finally:
            logger.close()

    def _bridged(self, model: GPT, data: Data) -> BridgedModel:
        """`model` with bridges to the dense GPT-2 of `bridge.dense`, which must read the same
        tokens (tokenizer, vocabulary size, context)."""
        path = Path(self.cfg.bridge.dense)  # type: ignore[arg-type]
        dense = load_gpt2(path, self.device)
        check_same_tokenizer(dense_tokenizer(path), data.tokenizer, path)
        vocab, n_ctx = dense.config.vocab_size, dense.config.n_positions
        if vocab != self.cfg.model.vocab_size or n_ctx < self.cfg.model.n_ctx:
            raise TrainingError(
                f"--dense {path}: vocabulary {vocab} and context {n_ctx}; the sparse model needs "
                f"vocabulary {self.cfg.model.vocab_size} and context >= {self.cfg.model.n_ctx}"
            )
        return BridgedModel(model, dense, self.cfg.bridge).to(self.device)

    def _claimed(self) -> tuple[dict[str, Any] | None, Path | None]:
        """After `_claim_out_dir`: (run.json, checkpoint to load), both None for a new run. The
        checkpoint is the newest whose files are intact; damaged newer ones are named."""
        if not self.opts.resume:
            return None, None
        run_info = _read_run_info(self.out)  # checked by _claim_out_dir: the same checks
        try:
            ckpt, skipped = newest_intact(self.out, run_info["id"], run_info["config"])
        except CheckpointError as e:
            raise TrainingError(f"--resume: {e}") from None
        if self.world.main:
            for line in skipped:
                print(f"warning: {line}", file=sys.stderr)
        if skipped and ckpt is None:
            raise TrainingError(
                f"--resume: no intact checkpoint in {self.out} ({len(skipped)} damaged: "
                f"{skipped[0]}); --overwrite starts the run again"
            )
        return run_info, ckpt

    def _claim_out_dir(self) -> None:
        """Check --out against --resume/--overwrite, lock it for this run's life (checked
        again under the lock), and clean up or create it. --overwrite removes what the earlier
        run wrote and nothing else; a folder that fails the checks is left as it was."""
        lock = FolderLock(self.out, "a training run")
        if not self.out.is_symlink():
            lock.check_free()  # a job running there is the first thing to say
        self._check_out()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = lock.acquire()
        run_info = self._check_out()
        if self.opts.resume:
            remove_leftovers(self.out)  # temporaries of a write the last process did not finish
        elif run_info is not None:
            remove_outputs(self.out, is_run_output)  # --overwrite

    def _check_out(self) -> dict[str, Any] | None:
        """run.json of the run --out holds (None: none) if --out suits the options, else a
        TrainingError; reads only."""
        out, opts = self.out, self.opts
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            what = "a symlink" if out.is_symlink() else "not a folder"
            raise TrainingError(f"--out {out}: is {what}; name a real folder")
        run_info = _read_run_info(out) if (out / RUN_FILE).is_file() else None
        if opts.resume:
            if run_info is None:
                raise TrainingError(f"--resume: {out} holds no sparse_tf run ({RUN_FILE} missing)")
            try:
                saved = TrainConfig.from_dict(run_info["config"], source=str(out / RUN_FILE))
            except (KeyError, TypeError, ConfigError) as e:
                raise TrainingError(f"--resume: {out / RUN_FILE} is unreadable ({e})") from None
            if diff := config_diff(saved.to_dict(), self.cfg.to_dict()):
                raise TrainingError(
                    f"--resume: the config differs from the run in {out}: {'; '.join(diff)}"
                )
        elif run_info is not None and not opts.overwrite:
            raise TrainingError(
                f"--out {out} holds another run; pass --resume to continue it or "
                "--overwrite to replace it (its checkpoints, final/ and logs are removed; "
                "other files in the folder stay)"
            )
        elif run_info is None and (others := user_entries(out)):
            more = ", ..." if len(others) > 3 else ""
            raise TrainingError(
                f"--out {out}: the folder is not empty ({', '.join(others[:3])}{more}) and "
                "holds no sparse_tf run; choose a new or empty folder"
            )
        return run_info

    def _new_run_info(self, data: Data) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "id": uuid.uuid4().hex[:12],
            "started": utc_now(),
            "command": sys.argv,
            "config": self.cfg.to_dict(),
            "options": self.opts.to_dict(),
            "versions": package_versions(),
            "git": git_revision(),
            "device": device_info(self.device),
            "data": data.summary(),
            "resumes": [],
        }

    def _banner(self, model: GPT, data: Data) -> str:
        cfg = self.cfg
        n_params = sum(p.numel() for p in model.parameters())
        summary = data.summary()
        corpus = summary["corpus"]
        kind = "dense" if cfg.dense else f"L0 {cfg.sparsity.l0:g}"
        return (
            f"sparse_tf {__version__}: {cfg.model.n_layer} layers, d_model {cfg.model.d_model}, "
            f"{n_params / 1e6:.2f}M parameters, {kind}, {cfg.max_steps} steps x "
            f"{cfg.batch_size} x {cfg.model.n_ctx} tokens on {self._where()}\n"
            f"data: {corpus['source']} ({corpus['documents']} documents, digest "
            f"{corpus['digest'][:12]}): {summary['train_tokens']:,} train / "
            f"{summary['val_tokens']:,} val tokens; tokenizer "
            f"{summary['tokenizer']['vocab_size']} tokens\nrun: {self.out}"
        ) + (
            f"\nbridged to the dense GPT-2 in {cfg.bridge.dense} at "
            f"{2 * cfg.model.n_layer + 1} sites"
            if cfg.bridge.dense is not None
            else ""
        )

    def _where(self) -> str:
        if not self.world.distributed:
            return str(self.device)
        kind = "GPUs" if self.device.type == "cuda" else "CPU processes"
        return f"{self.world.size} {kind} ({self.opts.dist.upper()})"

    # -- the loop ------------------------------------------------------------------------------

    def _loop(
        self,
        model: GPT,
        opt: SparseOptimizer,
        data: Data,
        logger: RunLogger | SilentLogger,
        position: int,
        run_info: dict[str, Any],
    ) -> None:
        cfg, opts = self.cfg, self.opts
        sampler = EpochSampler(len(data.train), cfg.seed)
        tokens_per_step = cfg.batch_size * cfg.model.n_ctx
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        window_start, t_window = opt.step_count, time.perf_counter()
        model.train()
        with _stop_signals() as stop:
            while opt.step_count < cfg.max_steps:
                step = opt.step_count  # 0-based index of the step being taken
                indices = sampler.indices(position, cfg.batch_size)
                loss = self._forward_backward(data.train, indices)
                position += cfg.batch_size
                stats = opt.step()
                opt.zero_grad()
                # Divergence is tracked on the device: no host sync on the hot path.
                bad = ~torch.isfinite(loss) | ~torch.isfinite(stats.grad_rms)
                first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
                loss_sum += loss
                done = opt.step_count
                logger.advance(done)
                is_last = done == cfg.max_steps
                at_log = done % opts.log_every == 0 or is_last
                stopping = bool(stop.requested)
                if self.world.distributed:
                    # Every rank stops after the same step (one rank may get the signal alone).
                    # Agreeing reads a flag on the host, so only at log steps, which sync anyway.
                    stopping = at_log and launch.any_rank(self.world, stopping, self._comm_device)
                if at_log or stopping:
                    self._check_finite(first_bad)
                    now = time.perf_counter()
                    n = done - window_start
                    if self.world.distributed:
                        torch.distributed.all_reduce(loss_sum)  # each rank's share of the mean
                        if self.bridged:
                            torch.distributed.all_reduce(self.bridge_sum)
                    metrics = {
                        "train/loss": float(loss_sum) / n,
                        "train/lr": stats.lr,
                        "train/grad_rms": float(stats.grad_rms),
                        "sparsity/l0": stats.l0,
                        "sparsity/nonzeros": sum(stats.nonzeros.values()),
                        "perf/tokens_per_s": n * tokens_per_step / (now - t_window),
                        "perf/step_ms": 1000 * (now - t_window) / n,
                        "perf/tokens": done * tokens_per_step,
                    }
                    if self.bridged:
                        metrics |= self._bridge_metrics(n)
                    if self.device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(self.device)
                        metrics["perf/gpu_mem_gib"] = peak / 2**30
                    if data.val is not None and opts.eval_every and done % opts.eval_every == 0:
                        metrics["val/loss"] = self.evaluate(model, data.val, opts.eval_windows)
                    logger.log(done, metrics)
                    loss_sum.zero_()
                    window_start, t_window = done, time.perf_counter()
                if done % opts.ckpt_every == 0 or is_last or stopping:
                    self._check_finite(first_bad)
                    path = self.out / step_dir_name(done)
                    if self.world.main or self.sharded:  # shards: every rank writes its own
                        path = save_checkpoint(
                            self.out,
                            model=model,
                            optimizer=opt,
                            tokenizer=data.tokenizer,
                            # run.json's own record of the config, so that a resumed run's
                            # checkpoints match it as its first ones did, whichever version
                            # wrote it (`newest_intact` compares the two).
                            config=run_info["config"],
                            state={
                                "data_position": position,
                                "lr": stats.lr,
                                "l0": stats.l0,
                                "run_id": run_info["id"],
                            },
                            keep_last=opts.keep_last,
                        )
                    if window_start == done:  # don't charge checkpoint time to the next window
                        t_window = time.perf_counter()
                    if stopping:
                        launch.barrier(self.world)  # the checkpoint is complete before any exit
                        raise TrainingError(
                            f"stopped by {stop.requested or 'a signal to another rank'} after "
                            f"step {done}; checkpoint {path} is complete: continue with --resume"
                        )

    def _bridge_metrics(self, steps: int) -> dict[str, float]:
        """Mean bridge losses of the log window: per kind, and per kind and site."""
        means = (self.bridge_sum / steps).tolist()  # [kind][site]
        self.bridge_sum.zero_()
        out = {}
        for kind, values in zip(LOSS_KINDS, means, strict=True):
            out[f"bridge/{kind}"] = sum(values) / len(values)
            for site, value in enumerate(values):
                out[f"bridge/{kind}/{site_name(site, self.cfg.model.n_layer)}"] = value
        return out

    def _forward_backward(self, windows: Windows, indices: np.ndarray) -> Tensor:
        """Accumulate the gradient of the global batch's mean token loss; returns this rank's
        share of that loss (the shares of all ranks sum to it).

        Each rank takes its consecutive slice of the batch's windows (disjoint, none skipped);
        the mean is over the targets of the whole batch, counted on every rank from the same
        windows, so the result does not depend on the number of ranks."""
        inputs, targets = windows.get(indices)  # [B, T] each, the global batch
        n_targets = int((targets != -100).sum())
        world = self.world
        per_rank = len(indices) // world.size
        mine = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        inputs, targets = inputs[mine], targets[mine]
        total = torch.zeros((), device=self.device)
        micro = min(self.cfg.micro, per_rank)
        starts = range(0, per_rank, micro)
        spreads = self._bridge_spreads(inputs, micro) if self.bridged else None
        for i in starts:
            x = inputs[i : i + micro].to(self.device, non_blocking=True)
            y = targets[i : i + micro]
            ce_scale = int((y != -100).sum()) / n_targets  # its share of the batch's targets
            y = y.to(self.device, non_blocking=True)
            last = i == starts[-1]
            # DDP averages gradients over ranks when the last micro-batch's backward runs;
            # FSDP reduce-scatters every micro-batch's into the shards (memory stays sharded).
            sync = contextlib.nullcontext()
            if world.distributed and not self.sharded and not last:
                sync = self.net.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    if self.bridged:  # the model's CE plus the bridges' terms
                        parts = self.net(x, targets=y, spreads=spreads)
                        share = len(x) / len(indices)  # of the batch's windows
                        objective = parts.total(self.cfg.bridge, ce_scale=ce_scale, scale=share)
                        self.bridge_sum += share * parts.per_site()
                        loss = parts.ce * ce_scale
                    else:
                        loss = target_loss(self.net(x), y, reduction="sum") / n_targets
                        objective = loss
                # x world: DDP's (FSDP's) average over ranks gives the sum of the ranks' shares.
                (objective * world.size if world.distributed else objective).backward()
            total += loss.detach()
        return total

    def _bridge_spreads(self, inputs: Tensor, micro: int) -> Tensor:
        """The NMSE denominators of the whole global batch (a forward pass of both models
        without gradient over this rank's windows, summed over ranks), so that every
        micro-batch's NMSE is its exact share of the batch's: the result does not depend on
        the micro-batch size or the number of ranks."""
        model = self.net.module if isinstance(self.net, DistributedDataParallel) else self.net
        with self._autocast():
            moments = model.target_moments(inputs, micro)
        if self.world.distributed:
            torch.distributed.all_reduce(moments)
        return model.target_spreads(moments)

    def evaluate(self, model: GPT, windows: Windows, limit: int | None) -> float:
        """Mean next-token loss over `limit` evenly spread windows (all when None); with
        several ranks each evaluates its share (every rank must call this)."""
        model.eval()
        try:
            return validation_loss(
                model, windows, limit, self.cfg.micro, amp=self.amp, world=self.world
            )
        finally:
            model.train()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_finite(self, first_bad: Tensor) -> None:
        bad_step = int(first_bad)
        if bad_step >= 0:
            ckpts = list_checkpoints(self.out)
            keep = f"the last good checkpoint is {ckpts[-1][1]}" if ckpts else "no checkpoint"
            raise TrainingError(
                f"the loss or gradient became NaN/inf at step {bad_step + 1}; training stopped, "
                f"{keep} (lower --optim.lr or check the data)"
            )

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self, model: GPT, data: Data, logger: RunLogger | SilentLogger) -> TrainResult:
        """Every rank: the full validation loss (shared out) and, when sharded, the gathering
        of the weights; rank 0 then exports OUT/final and writes the summary."""
        cfg = self.cfg
        final = self.out / FINAL_DIR
        val_loss = None
        if data.val is not None:
            val_loss = self.evaluate(model, data.val, None)
        if self.sharded:
            model = gathered_model(model)  # type: ignore[assignment]  # None off rank 0
        if not self.world.main:
            return TrainResult(out=self.out, final=final, summary={})
        if val_loss is not None:
            logger.log(cfg.max_steps, {"val/loss_full": val_loss}, echo=False)
        sizes = export_model(final, model, data.tokenizer, cfg.to_dict(), compressed=not cfg.dense)
        nonzeros = count_nonzeros(model)
        targets = {
            w.name: w.param.numel() if cfg.dense else kept_count(w, cfg.sparsity.l0, cfg.sparsity)
            for w in model.sparse_weights()
        }
        metrics = read_metrics_summary(self.out)
        run_info = read_json(self.out / RUN_FILE)
        started = datetime.datetime.fromisoformat(run_info["started"])
        summary = {
            "steps": cfg.max_steps,
            "tokens": cfg.max_steps * cfg.batch_size * cfg.model.n_ctx,
            "val_loss": val_loss,
            "final_train_loss": metrics.get("train/loss"),
            "tokens_per_s": metrics.get("tokens_per_s"),
            "wall_s_since_start": round(
                (datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1
            ),
            "export_bytes": sizes,
            "compression": round(sizes[SPARSE_MODEL_FILE] / sizes[MODEL_FILE], 4)
            if SPARSE_MODEL_FILE in sizes
            else None,
            "nonzeros": nonzeros,
            "target_nonzeros": targets,
        }
        if self.bridged and data.val is not None:  # the bridges on held-out windows
            model.eval()
            with self._autocast():
                table = bridge_validation(model, data.val, self.opts.eval_windows, cfg.micro)
            summary["bridge_val"] = table.to_dict()
            logger.message(table.format())
        write_json(self.out / SUMMARY_FILE, summary)
        files = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items())
        val = "-" if val_loss is None else f"{val_loss:.4f}"
        logger.message(f"done: val loss {val}; exported {final} ({files})")
        return TrainResult(out=self.out, final=final, summary=summary)


@torch.no_grad()
def validation_loss(
    model: GPT,
    windows: Windows,
    limit: int | None,
    batch_size: int,
    amp: bool = False,
    world: launch.World = launch.World(),  # noqa: B008 - frozen
) -> float:
    """Mean next-token loss of `model` (on its own device) over `limit` evenly spread windows
    (all when None), `batch_size` windows at a time; bf16 autocast when `amp`.

    With several ranks (`world`; every rank calls this) each takes a consecutive share of the
    windows and the sums are all-reduced. The shares are padded to equal length with windows
    that are not counted, so that every rank runs as many forward passes (an FSDP forward is
    collective)."""
    device = next(model.parameters()).device
    indices = eval_indices(len(windows), limit)
    n_real = len(indices)
    if world.distributed:
        per_rank = -(-len(indices) // world.size)
        start = min(world.rank * per_rank, len(indices))
        indices = indices[start : start + per_rank]
        n_real = len(indices)  # the padding (a repeat of the first window) comes after these
        indices = np.concatenate([indices, np.zeros(per_rank - n_real, dtype=indices.dtype)])
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(indices), batch_size):
        x, y = windows.get(indices[i : i + batch_size])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x.to(device))
        real = max(0, min(batch_size, n_real - i))  # rows that are not padding
        if real:
            y = y[:real].to(device)
            loss_sum += target_loss(logits[:real], y, reduction="sum").double()
            count += (y != -100).sum()
    if world.distributed:
        sums = torch.stack([loss_sum, count])
        torch.distributed.all_reduce(sums)
        loss_sum, count = sums[0], sums[1]
    return float(loss_sum) / float(count)


def read_metrics_summary(out: Path) -> dict[str, float]:
    """The last training loss and the mean tokens/s over the run's log records."""
    records = [r for r in read_metrics(out) if "train/loss" in r]
    if not records:
        return {}
    rates = [r["perf/tokens_per_s"] for r in records]
    return {"train/loss": records[-1]["train/loss"], "tokens_per_s": sum(rates) / len(rates)}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class _StopFlag:
    requested: str | None = None


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopFlag]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so that an interrupted
    run writes a complete checkpoint instead of dying mid-update. A second signal kills."""
    flag = _StopFlag()
    previous = {}

    def handler(signum: int, frame: object) -> None:
        if flag.requested:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        flag.requested = signal.Signals(signum).name

    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: signals stay with the caller
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def is_run_output(name: str) -> bool:
    """Whether an entry of a run folder is one the run writes: run.json, summary.json,
    metrics.jsonl, step-N/, final/, wandb/ (what --overwrite removes)."""
    return name in (RUN_FILE, SUMMARY_FILE, METRICS_FILE, FINAL_DIR, WANDB_DIR) or (
        is_checkpoint_name(name)
    )


def _read_run_info(out: Path) -> dict[str, Any]:
    """run.json of the folder `out`, which must be a sparse_tf run's."""
    try:
        info = read_json(out / RUN_FILE)
    except ValueError as e:
        raise TrainingError(f"--out {out}: {e}") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise TrainingError(
            f"--out {out}: its {RUN_FILE} was not written by sparse_tf; choose another folder "
            "(nothing in this one was touched)"
        )
    for key, kind in (("id", str), ("config", dict), ("resumes", list), ("started", str)):
        if not isinstance(info.get(key), kind):
            raise TrainingError(
                f"{out / RUN_FILE}: field {key!r} is missing or not a {kind.__name__} "
                "(edited by hand?)"
            )
    return info


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts ('optim.lr 0.01 -> 0.02')."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def _check_same_corpus(run_info: dict[str, Any], data: Data, out: Path) -> None:
    before = run_info.get("data", {}).get("corpus", {}).get("digest")
    now = data.corpus.digest
    if before is not None and before != now:
        raise TrainingError(
            f"--resume: the corpus changed since the run in {out} started (digest "
            f"{before[:12]} -> {now[:12]}); the data order would not continue"
        )
