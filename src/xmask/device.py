"""Choosing the compute device at run time (never hard-coded), and this process's place among
the processes ``torchrun`` starts (``xmask train`` and ``xmask predict`` both run under it)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xmask.errors import XmaskError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → this process's CUDA device when one is available, else the CPU; any other
    name (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is checked.

    Raises:
        XmaskError: a malformed name, or CUDA asked for where none is available.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise XmaskError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise XmaskError(f"device {name!r}: CUDA is not available on this machine")
    return device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group ``torchrun`` describes, if any.

    Args:
        device_kind: ``"cuda"`` or ``"cpu"`` (picks NCCL or gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
