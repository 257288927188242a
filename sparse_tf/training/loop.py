"""The training loop: a model, an objective, an optimizer, data and a run folder.

`train(cfg, opts)` claims the run folder (`run_folder`), prepares the data, builds the model
and lets the config's objective (`cfg.objective()`, `objective`) wrap it, then runs optimizer
steps of micro-batches (DDP or FSDP under torchrun) with logging, periodic validation
(`validation`), checkpoints and stop signals, and at the end validates on the whole split and
exports OUT/final with OUT/summary.json. Nothing here depends on which objective it trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from sparse_tf import kernels
from sparse_tf._version import __version__
from sparse_tf.checkpoint import export_model, list_checkpoints, load_checkpoint, save_checkpoint
from sparse_tf.config import ConfigError
from sparse_tf.data.pipeline import Data, prepare_data
from sparse_tf.data.ranks import open_on_every_rank
from sparse_tf.data.tokenizer import eot_id, load_tokenizer
from sparse_tf.data.tokens import EpochSampler, Windows
from sparse_tf.devices import device_info, resolve_device
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import (
    FINAL_DIR,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILE,
    RUN_TOML_FILE,
    SPARSE_MODEL_FILE,
    SUMMARY_FILE,
    step_dir_name,
)
from sparse_tf.gpt2 import GPT2Config, require_transformers
from sparse_tf.io import FolderLock, read_json, write_json
from sparse_tf.log import RunLogger, SilentLogger, truncate_metrics
from sparse_tf.model import GPTConfig
from sparse_tf.optim import SparseOptimizer
from sparse_tf.parallel import launch
from sparse_tf.parallel.fsdp import gathered_model, shard_model
from sparse_tf.provenance import utc_now
from sparse_tf.sparsity import count_nonzeros, kept_count
from sparse_tf.tasks import task_tokens
from sparse_tf.trainable import TrainableModel, build_model
from sparse_tf.training.config import RunOptions, TrainConfig, TrainingError, TrainingStopped
from sparse_tf.training.graphs import GraphedMicroBatch
from sparse_tf.training.objective import Loss, MicroBatch, TrainEnv
from sparse_tf.training.run_folder import (
    check_same_corpus,
    claim_out_dir,
    new_run_info,
    read_metrics_summary,
    resume_point,
    write_run_toml,
)
from sparse_tf.training.validation import validation_loss

T = TypeVar("T")


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


class _Run:
    def __init__(self, cfg: TrainConfig, opts: RunOptions) -> None:
        self.cfg, self.opts = cfg, opts
        if isinstance(cfg.model, GPT2Config):
            require_transformers()  # before any data is prepared, not after
        self.objective = cfg.objective()
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
        self.env = TrainEnv(self.device, self.world, self.amp)
        self.sharded = self.world.distributed and opts.dist == "fsdp"
        if opts.compile != "none" and self.sharded:
            raise ConfigError("--compile: not supported with --dist fsdp; use --dist ddp")
        if opts.cuda_graphs:
            self._check_graphable()
        self.graphed: GraphedMicroBatch | None = None  # set when the loop starts
        self._data_s = 0.0  # host time reading batches from the store, this log window

    def _check_graphable(self) -> None:
        """--cuda-graphs: a model and objective a graph can replay, in one CUDA process."""
        if not isinstance(self.cfg.model, GPTConfig):  # others are not known to be capturable
            raise ConfigError("--cuda-graphs: sparse_tf GPT models only (not hf_gpt2)")
        if not self.objective.graphable:
            raise ConfigError(
                f"--cuda-graphs: not supported for this objective "
                f"({type(self.objective).__name__}); the language-model objective only"
            )
        if self.device.type != "cuda":
            raise ConfigError(
                f"--cuda-graphs: replays CUDA graphs, which need a CUDA device (this run is on "
                f"{self.device})"
            )
        if self.world.distributed:
            raise ConfigError("--cuda-graphs: one process only (not under torchrun)")

    def _check_world(self) -> None:
        """The global batch (batch_size sequences per optimizer step) is the same at any number
        of ranks: each rank takes batch_size / world of it, in micro-batches."""
        cfg, world = self.cfg, self.world.size
        if self.opts.dist == "fsdp" and (
            not isinstance(cfg.model, GPTConfig) or not self.objective.shardable
        ):
            raise ConfigError(
                "--dist fsdp: shards plain sparse_tf GPTs only (not hf_gpt2, not bridges); "
                "use --dist ddp"
            )
        if self.opts.dist == "fsdp" and not cfg.optim.train_eot_bigram:
            raise ConfigError(
                "--optim.no-train-eot-bigram: not supported with --dist fsdp (the row is part "
                "of a sharded table); use --dist ddp"
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
            self._release_captures()

    def _release_captures(self) -> None:
        """Drop the CUDA graphs of this run as it ends: its micro-batch graph, and the
        projection's capture of its weights, which `kernels.graphs` keeps for as long as a
        model trains (several at once in a process). Their memory is then free for the next
        run in the same process (a sweep, a benchmark, `sparse-tf analyze`)."""
        self.graphed = None
        net: torch.nn.Module | None = getattr(self, "net", None)
        if net is not None:
            kernels.graphs.release(list(net.parameters()))

    def _claim(self) -> None:
        self._lock = claim_out_dir(self.out, self.cfg, self.opts)

    def _run(self) -> TrainResult:
        cfg, opts, world = self.cfg, self.opts, self.world
        # Tokenising a corpus the first time takes minutes: shown as `sparse-tf data prepare`
        # shows it, by rank 0 (under torchrun, whichever rank holds the prepare lock builds).
        progress = opts.progress if world.main else "none"
        if world.distributed:  # tokenise before the process group, not inside a collective
            prepare_data(
                cfg.data,
                cfg.model.vocab_size,
                cfg.model.n_ctx,
                reserved_tokens=task_tokens(),
                progress=progress,
            )
        launch.start(world, self.device)
        self._on_main(self._claim)  # rank 0 checks and prepares --out for everyone
        run_info, ckpt = resume_point(self.out, opts, main=world.main)

        def load_data(build: bool) -> Data:
            tokenizer = load_tokenizer(ckpt) if ckpt is not None else None
            return prepare_data(
                cfg.data,
                cfg.model.vocab_size,
                cfg.model.n_ctx,
                tokenizer=tokenizer,
                reserved_tokens=task_tokens(),
                build=build,
                progress=progress if build else "none",
            )

        data = open_on_every_rank(world, load_data)
        if run_info is not None:
            check_same_corpus(run_info, data, self.out)
        torch.manual_seed(cfg.seed)
        with torch.device(self.device):  # the same on every rank: same seed, same device type
            model: TrainableModel = build_model(cfg.model, eot_id(data.tokenizer))
        if self.sharded:
            shard_model(model, self.device)  # each rank keeps its rows of every tensor
        model = self.objective.setup(model, data, self.env, new_run=ckpt is None)
        opt = SparseOptimizer(
            model,
            cfg.optim,
            None if cfg.dense else cfg.sparsity,
            cfg.max_steps,
            eot_id=eot_id(data.tokenizer),
        )
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
            run_info = new_run_info(cfg, opts, self.device, data)
        else:
            run_info["resumes"].append(
                {"step": start, "time": utc_now(), "device": device_info(self.device)}
            )
        if world.main:
            write_json(self.out / RUN_FILE, run_info)
            if not opts.resume or not (self.out / RUN_TOML_FILE).is_file():
                # The config a new run starts with (a run begun before config.toml existed
                # gets it when resumed): run.json first, so a folder never holds the file alone.
                write_run_toml(self.out, cfg, opts)
            if damaged := truncate_metrics(self.out, start):
                print(
                    f"warning: {self.out / METRICS_FILE}: dropped {damaged} damaged line(s) "
                    "(metrics are a log; the checkpoint is the source of truth)",
                    file=sys.stderr,
                )
        launch.barrier(world)
        self.net: torch.nn.Module = model  # type: ignore[assignment]
        if world.distributed and not self.sharded:
            # Gradients are averaged over ranks in buckets during the backward pass; the
            # parameters (and so the projection's kept sets) stay identical on every rank.
            self.net = DistributedDataParallel(
                model,  # type: ignore[arg-type]
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        if opts.compile != "none":
            # Compiled lazily at the first step; validation keeps the eager `model` (other
            # shapes, no recompiles).
            self.net = torch.compile(self.net)  # type: ignore[assignment]
        if opts.cuda_graphs:  # captured at the first micro-batch
            # A partial of the env, not a lambda on self: a run in a reference cycle would
            # keep its model, optimizer and graph on the GPU after train() returns, until
            # Python's next full collection.
            autocast = functools.partial(self.env.autocast, cache=False)
            self.graphed = GraphedMicroBatch(self.objective, self.net, autocast)
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

    def _banner(self, model: TrainableModel, data: Data) -> str:
        cfg = self.cfg
        n_params = sum(p.numel() for p in model.parameters())
        summary = data.summary()
        corpus = summary["corpus"]
        kind = "dense" if cfg.dense else f"L0 {cfg.sparsity.l0:g}"
        extra = self.objective.banner()
        docs = "streamed" if corpus["documents"] is None else f"{corpus['documents']} documents"
        return (
            f"sparse_tf {__version__}: {cfg.model.n_layer} layers, d_model {cfg.model.d_model}, "
            f"{n_params / 1e6:.2f}M parameters, {kind}, {cfg.max_steps} steps x "
            f"{cfg.batch_size} x {cfg.model.n_ctx} tokens on {self._where()}\n"
            f"data: {corpus['source']} ({docs}, digest "
            f"{corpus['digest'][:12]}): {summary['train_tokens']:,} train / "
            f"{summary['val_tokens']:,} val tokens; tokenizer "
            f"{summary['tokenizer']['vocab_size']} tokens\nrun: {self.out}"
        ) + (f"\n{extra}" if extra is not None else "")

    def _where(self) -> str:
        compiled = "" if self.opts.compile == "none" else f", compiled ({self.opts.compile})"
        if not self.world.distributed:
            return f"{self.device}{compiled}"
        kind = "GPUs" if self.device.type == "cuda" else "CPU processes"
        return f"{self.world.size} {kind} ({self.opts.dist.upper()}{compiled})"

    # -- the loop ------------------------------------------------------------------------------

    def _loop(
        self,
        model: TrainableModel,
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
                # In place under CUDA graphs: the replays accumulate into these tensors.
                opt.zero_grad(set_to_none=self.graphed is None)
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
                    metrics = {
                        "train/loss": float(loss_sum) / n,
                        "train/lr": stats.lr,
                        "train/grad_rms": float(stats.grad_rms),
                        "sparsity/l0": stats.l0,
                        "sparsity/nonzeros": sum(stats.nonzeros.values()),
                        "perf/tokens_per_s": n * tokens_per_step / (now - t_window),
                        "perf/step_ms": 1000 * (now - t_window) / n,
                        # Reading the batch's windows from the store (memory-mapped) on the
                        # host, per step: on a GPU it overlaps the previous step's kernels,
                        # so the step waits on data at most this long.
                        "perf/data_ms": 1000 * self._data_s / n,
                        "perf/tokens": done * tokens_per_step,
                    }
                    metrics |= self.objective.log_metrics(n)
                    if self.device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(self.device)
                        metrics["perf/gpu_mem_gib"] = peak / 2**30
                    if data.val is not None and opts.eval_every and done % opts.eval_every == 0:
                        metrics["val/loss"] = self.evaluate(model, data.val, opts.eval_windows)
                    logger.log(done, metrics)
                    loss_sum.zero_()
                    self._data_s = 0.0
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
                        raise TrainingStopped(stop.requested, done, str(path))

    def _forward_backward(self, windows: Windows, indices: np.ndarray) -> Tensor:
        """Accumulate the gradient of the global batch's objective; returns this rank's share
        of the batch's mean token loss (the shares of all ranks sum to it).

        Each rank takes its consecutive slice of the batch's windows (disjoint, none skipped);
        the mean is over the targets of the whole batch, counted on every rank from the same
        windows, so the result does not depend on the number of ranks."""
        fetch_start = time.perf_counter()
        inputs, targets = windows.get(indices)  # [B, T] each, the global batch
        self._data_s += time.perf_counter() - fetch_start
        n_targets = int((targets != -100).sum())
        world = self.world
        per_rank = len(indices) // world.size
        mine = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        inputs, targets = inputs[mine], targets[mine]
        total = torch.zeros((), device=self.device)
        micro = min(self.cfg.micro, per_rank)
        starts = range(0, per_rank, micro)
        self.objective.start_batch(inputs, micro)
        for i in starts:
            x = inputs[i : i + micro].to(self.device, non_blocking=True)
            y = targets[i : i + micro]
            target_share = int((y != -100).sum()) / n_targets
            batch = MicroBatch(
                inputs=x,
                targets=y.to(self.device, non_blocking=True),
                batch_targets=n_targets,
                target_share=target_share,
                window_share=len(x) / len(indices),
            )
            if self.graphed is not None:
                total += self.graphed(batch)
                continue
            last = i == starts[-1]
            # DDP averages gradients over ranks when the last micro-batch's backward runs;
            # FSDP reduce-scatters every micro-batch's into the shards (memory stays sharded).
            sync = contextlib.nullcontext()
            if world.distributed and not self.sharded and not last:
                sync = self.net.no_sync()  # type: ignore[operator]
            with sync:
                with self.env.autocast():
                    loss: Loss = self.objective.loss(self.net, batch)
                # x world: DDP's (FSDP's) average over ranks gives the sum of the ranks' shares.
                (loss.total * world.size if world.distributed else loss.total).backward()
            total += loss.lm.detach()
        return total

    def evaluate(self, model: TrainableModel, windows: Windows, limit: int | None) -> float:
        """Mean next-token loss over `limit` evenly spread windows (all when None); with
        several ranks each evaluates its share (every rank must call this)."""
        model.eval()
        try:
            return validation_loss(
                model, windows, limit, self.cfg.micro, amp=self.amp, world=self.world
            )
        finally:
            model.train()

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

    def _finish(
        self, model: TrainableModel, data: Data, logger: RunLogger | SilentLogger
    ) -> TrainResult:
        """Every rank: the full validation loss (shared out) and, when sharded, the gathering
        of the weights; rank 0 then exports OUT/final and writes the summary."""
        cfg = self.cfg
        final = self.out / FINAL_DIR
        val_loss = None
        if data.val is not None:
            val_loss = self.evaluate(model, data.val, None)
        if self.sharded:
            model = gathered_model(model)  # type: ignore[arg-type]  # None off rank 0
        if not self.world.main:
            return TrainResult(out=self.out, final=final, summary={})
        if val_loss is not None:
            logger.log(cfg.max_steps, {"val/loss_full": val_loss}, echo=False)
        sizes = export_model(
            final,
            model,
            data.tokenizer,
            cfg.to_dict(),
            compressed=not cfg.dense,
            results={"val_loss": val_loss},
        )
        nonzeros = count_nonzeros(model)  # type: ignore[arg-type]
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
        if data.val is not None:  # what the objective says about held-out windows
            model.eval()
            with self.env.autocast():
                validated = self.objective.validate(
                    model, data.val, self.opts.eval_windows, cfg.micro
                )
            if validated is not None:
                entries, message = validated
                summary |= entries
                logger.message(message)
        write_json(self.out / SUMMARY_FILE, summary)
        files = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items())
        val = "-"
        if val_loss is not None and data.val is not None:  # say over what, as eval does
            val = f"{val_loss:.4f} (the whole validation split: {len(data.val):,} windows)"
        logger.message(f"done: val loss {val}; exported {final} ({files})")
        return TrainResult(out=self.out, final=final, summary=summary)


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
