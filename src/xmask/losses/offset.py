"""The offset loss: each positive cell of the P2R assignment learns the vector from its centre to
its head point (:mod:`xmask.models.offset_head`)."""

from __future__ import annotations

import torch
from torch.nn import functional as nnf

from xmask.models.count_head import COUNT_STRIDE


def offset_targets(
    cells: torch.Tensor, points: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """``P×2`` ``(dx, dy)`` from the centre of each cell (``b·h·w + i·w + j`` on a stride-4
    grid of ``grid = (h, w)``) to its head point (``P×2`` ``(x, y)`` pixels)."""
    h, w = grid
    rest = cells % (h * w)
    centres = torch.stack([rest % w, rest // w], dim=1).to(points.dtype)
    return points - (centres + 0.5) * COUNT_STRIDE


def offset_loss(
    offsets: torch.Tensor, cells: torch.Tensor, points: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Smooth-L1 between the predicted offsets of the positive cells and their targets, mean
    over cells and axes (0, with a gradient path, when there is no positive).

    Args:
        offsets: ``B×2×h×w`` ``(dx, dy)`` pixels.
        cells: ``P int64`` positive cells, numbered ``b·h·w + i·w + j``.
        points: ``P×2`` their head points ``(x, y)``.
        beta: where the smooth-L1 turns from quadratic to linear, in pixels.
    """
    b, _, h, w = offsets.shape
    if cells.numel() == 0:
        return offsets.sum() * 0.0
    flat = offsets.permute(0, 2, 3, 1).reshape(b * h * w, 2)
    target = offset_targets(cells, points.to(offsets.dtype), (h, w))
    return nnf.smooth_l1_loss(flat[cells], target, beta=beta)
