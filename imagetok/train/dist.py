"""Process-group setup for multi-process training under ``torchrun``.

``torchrun --nproc-per-node N -m imagetok train --config train.json`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``; :func:`setup` reads them and
starts the process group: NCCL when training on CUDA, gloo on CPU. Without them (or with
``WORLD_SIZE=1``) training runs in one process and nothing here does anything.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else cpu; ``"cuda"`` -> ``cuda:LOCAL_RANK``."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available in this torch build/machine")
        return torch.device(f"cuda:{local}" if name == "cuda" else name)
    return torch.device("cpu")


def setup(device: torch.device, timeout_s: float = 1800) -> bool:
    """Start the process group from torchrun's environment when ``WORLD_SIZE > 1``.

    Returns True when this call started it (so the caller should :func:`teardown`), False when
    running single-process or when a group already exists (a user script started it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def teardown(barrier: bool = True) -> None:
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
