"""Choosing a torch device from a flag, and describing it for the records."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from sparse_tf.config import ConfigError


def resolve_device(spec: str, flag: str = "RunOptions.device") -> torch.device:
    """'auto' → CUDA when available, else CPU; anything else must exist on this machine.
    Errors name `flag`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{flag}={spec!r}: not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag}={spec!r}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag}={spec!r}: no such GPU")
    elif device.type != "cpu":
        raise ConfigError(f"{flag}={spec!r}: only cpu and cuda are supported")
    return device


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return info
