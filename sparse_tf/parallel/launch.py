"""Running under torchrun: this process's place in the world, the process group, agreement
between ranks, and a clean exit.

    torchrun --standalone --nproc-per-node 2 -m sparse_tf.cli train --preset ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is one process (world of 1)
and nothing here does anything. The process group is NCCL on CUDA and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparse_tf.config import ConfigError

TIMEOUT_ENV = "SPARSE_TF_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks before the run fails (default 600): a
dead rank ends the run instead of hanging it."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes run.json, logs, checkpoints and the export."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """This process's rank, world size and local rank, as torchrun sets them."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    try:
        size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); got "
            f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}"
        ) from None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={size})")
    return World(rank, size, local)


def start(world: World, device: torch.device) -> None:
    """Join the process group (from torchrun's environment) unless already in one."""
    if not world.distributed or dist.is_initialized():
        return
    seconds = int(os.environ.get(TIMEOUT_ENV, "600"))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=seconds),
        device_id=device if device.type == "cuda" else None,
    )


def _flag(world: World, value: int, device: torch.device, op: dist.ReduceOp) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def any_rank(world: World, flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any (e.g. a stop signal one rank received)."""
    if not world.distributed:
        return flag
    return bool(_flag(world, int(flag), device, dist.ReduceOp.MAX))


def share_error(world: World, message: str | None, device: torch.device) -> str | None:
    """Rank 0's error message (None: it succeeded), on every rank: what rank 0 alone checks
    (the output folder, the data) fails the run on all ranks, instead of leaving them waiting."""
    if not world.distributed:
        return message
    data = (message or "").encode()
    n = _flag(world, len(data) if world.main else 0, device, dist.ReduceOp.MAX)
    if n == 0:
        return None
    buf = torch.zeros(n, dtype=torch.uint8, device=device)
    if world.main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode()


def gather_text(world: World, text: str | None) -> list[str | None]:
    """Every rank's `text`, in rank order, on every rank (small strings: messages, digests)."""
    if not world.distributed:
        return [text]
    out: list[str | None] = [None] * world.size
    dist.all_gather_object(out, text)
    return out


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank went away (a closed
    connection, a timeout), as opposed to a bug."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return any(s in text for s in ("Connection reset", "Connection closed", "Timed out", "NCCL"))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def end(world: World) -> None:
    """Leave the process group together. Callers then exit with os._exit: gloo workers can
    abort in interpreter teardown after a clean run (a quarter to half of 2-rank CPU runs
    did, with torch 2.13)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
