"""Choosing the compute device at run time (never hard-coded)."""

from __future__ import annotations

import re

import torch

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
