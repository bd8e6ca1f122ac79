"""Multi-process training through ``torchrun``: process group set-up and small collectives.

``torchrun --nproc_per_node N -m xmask train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` then joins the group (NCCL on CUDA, gloo on the CPU).
A plain ``xmask train`` runs as rank 0 of 1 with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. 'checkpoint now')."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank.

    DDP broadcasts them at the start of each forward, but the forward then updates each
    rank's copy with its own batch; syncing after every forward that moves them (the student's
    step, the teacher's train-mode pass in ``"own"`` mode) keeps every rank identical.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """Three float64 checksums of every parameter and buffer (sum, sum of squares, and a sum
    weighted by position), equal on two replicas exactly when their weights agree."""
    values = [t.detach().double().flatten() for t in module.state_dict().values()]
    flat = torch.cat(values) if values else torch.zeros(1, dtype=torch.float64)
    ramp = torch.linspace(0.5, 1.5, flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * flat).sum(), (flat * ramp).sum()])


def replicas_agree(module: torch.nn.Module, info: DistInfo, device: torch.device) -> bool:
    """Whether every rank holds the same weights in ``module`` (True on a single process)."""
    if not info.enabled:
        return True
    mine = fingerprint(module).to(device)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
