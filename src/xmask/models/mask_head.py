"""Mask head (XMask, paper Sec. 3.2): a per-pixel embedding parallel to the count head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

EMBED_DIM = 16
"""``D``, the embedding channels (paper and authors' code)."""


@dataclass
class MaskHeadOutput:
    """What :class:`MaskHead` returns.

    Attributes:
        embedding: ``B×D×2h×2w`` unit-length embedding on the stride-4 grid of the logits.
    """

    embedding: Tensor


def coord_channels(x: Tensor) -> Tensor:
    """CoordConv input: ``x`` with two channels appended, the cell column and row mapped
    linearly to ``[−1, 1]`` (first and last cell; 0 on a one-cell axis)."""
    b, _, h, w = x.shape
    xs, ys = _unit_range(w, x), _unit_range(h, x)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_x, grid_y]).unsqueeze(0).expand(b, 2, h, w)
    return torch.cat([x, coords.to(memory_format=torch.contiguous_format)], dim=1)


def _unit_range(n: int, like: Tensor) -> Tensor:
    """``n`` values from −1 to 1 evenly spaced (``torch.linspace``; ``[0]`` for ``n = 1``),
    built from ``arange`` so that a traced ``n`` stays a dimension of an exported graph."""
    steps = torch.arange(n, dtype=like.dtype, device=like.device)
    return steps * (2.0 / max(n - 1, 1)) - (1.0 if n > 1 else 0.0)


class MaskHead(nn.Module):
    """CoordConv, two conv3×3+BN+ReLU, a conv3×3 to ``4·C`` channels + PixelShuffle(2) + ReLU
    (stride 8 → 4), a 1×1 conv to ``D``, L2 normalisation per pixel (the authors' model,
    ``docs/equations.md``).

    Args:
        in_channels: channels of the neck's stride-8 map.
        channels: hidden channels.
        embed_dim: ``D``.
    """

    def __init__(self, in_channels: int, channels: int = 128, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.block = nn.Sequential(
            nn.Conv2d(in_channels + 2, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 4 * channels, 3, padding=1),
            nn.PixelShuffle(2),
            nn.ReLU(inplace=True),
        )
        self.embed = nn.Conv2d(channels, embed_dim, 1)

    def forward(self, x: Tensor) -> MaskHeadOutput:
        """``B×C×h×w`` stride-8 features → :class:`MaskHeadOutput` (``B×D×2h×2w``)."""
        embedding = self.embed(self.block(coord_channels(x)))
        return MaskHeadOutput(embedding=nnf.normalize(embedding, dim=1, eps=1e-6))
