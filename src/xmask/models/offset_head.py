"""Offset head: where in its stride-4 cell (and around it) each head point lies.

A P2R counter (Stage 1) says *which* cells are heads; the positive cell of a head is the cheapest
of its region (distance and logit together), not always the cell that holds the point, and a
cell centre is up to 2.8 px from any point inside it. The offset head predicts, per cell, the
vector from the cell centre to its head point; decoded points are ``cell centre + offset``
(:func:`xmask.models.count_head.apply_offsets`). It is trained on the positive cells of the P2R
assignment (:mod:`xmask.losses.offset`), after the counter, which it never changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MAX_OFFSET = 8.0
"""Largest offset the head can predict along each axis, in pixels (two cells)."""


class OffsetHead(nn.Module):
    """conv3×3+ReLU, a conv3×3 to ``2·4`` channels, PixelShuffle(2): ``(dx, dy)`` per stride-4
    cell, bounded by ``max_offset·tanh``; the last convolution starts at zero (offset 0, the
    cell centre, until trained).

    Args:
        in_channels: channels of the neck's stride-8 map.
        channels: hidden channels.
        max_offset: bound of each component, in pixels.
    """

    def __init__(self, in_channels: int, channels: int = 64, max_offset: float = MAX_OFFSET):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.predict = nn.Conv2d(channels, 2 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.relu = nn.ReLU(inplace=True)
        self.max_offset = max_offset
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.predict.weight)
        nn.init.zeros_(self.predict.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` stride-8 features → ``B×2×2h×2w`` offsets ``(dx, dy)`` in pixels."""
        raw = self.shuffle(self.predict(self.relu(self.conv(x))))
        return self.max_offset * torch.tanh(raw)
