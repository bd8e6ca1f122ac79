"""Multi-process training through ``torchrun``: process group set-up and small collectives.

``torchrun --nproc_per_node N -m xmask train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`xmask.device.init_distributed` then joins the group (NCCL on CUDA, gloo
on the CPU). A plain ``xmask train`` runs as rank 0 of 1 with no process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from xmask.device import DistInfo


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
