"""Upsampling and depthwise separable Gaussian smoothing of the mask embedding (Eq. 2–5).

The stride-4 embedding is upsampled to image resolution and blurred channel by channel with a
fixed, normalised 1-D Gaussian along x, then along y; the loss (Eq. 10) and the instance
masks (Eq. 11–12) both read the smoothed map ``Ẽ``. Training uses ``k = 7, σ = 1.5``,
evaluation ``σ = 3`` (REFERENCE.md); both are configuration, not code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf


def gaussian_kernel1d(kernel: int, sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Eq. 2: ``g(u) = exp(−u²/2σ²) / Σ_u' exp(−u'²/2σ²)``, ``u = −⌊k/2⌋ … ⌊k/2⌋``.

    Args:
        kernel: ``k``, odd and positive.
        sigma: ``σ > 0`` in pixels.

    Returns:
        ``k`` weights summing to 1.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {kernel}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    u = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    g = torch.exp(-(u * u) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype)


class GaussianSmoothing(nn.Module):
    """Eq. 4–5: depthwise ``1×k`` then ``k×1`` convolutions with fixed Gaussian weights.

    Zero padding of ``⌊k/2⌋`` on each side, as in Eq. 4–5 (so pixels within ``⌊k/2⌋`` of the
    border lose some mass, exactly like the equivalent dense 2-D convolution). The weights are
    buffers, not parameters: nothing trains them and checkpoints do not store them.

    Args:
        channels: ``D``, the embedding channels.
        kernel: ``k`` (odd).
        sigma: ``σ``.
    """

    def __init__(self, channels: int, kernel: int, sigma: float) -> None:
        super().__init__()
        self.channels, self.kernel, self.sigma = channels, kernel, sigma
        g = gaussian_kernel1d(kernel, sigma)
        self.register_buffer("weight_x", g.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1), False)
        self.register_buffer("weight_y", g.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1), False)

    def forward(self, embedding: Tensor) -> Tensor:
        """``B×D×H×W`` → ``B×D×H×W`` smoothed."""
        half = self.kernel // 2
        wx = self.weight_x.to(embedding.dtype)
        wy = self.weight_y.to(embedding.dtype)
        x = nnf.conv2d(embedding, wx, padding=(0, half), groups=self.channels)
        return nnf.conv2d(x, wy, padding=(half, 0), groups=self.channels)


def upsample_embedding(embedding: Tensor, size: tuple[int, int], stride: int = 4) -> Tensor:
    """Stride-``stride`` embedding → image resolution, grid-aligned.

    Bilinear upsampling by exactly ``stride`` (``align_corners=False``, so cell ``(i, j)``'s
    value sits at its centre ``(stride·j + stride/2, stride·i + stride/2)``, as in
    :mod:`xmask.geometry`), then cropped to ``size``.

    Args:
        embedding: ``B×D×h×w`` with ``h = ceil(H/stride)``, ``w = ceil(W/stride)``.
        size: ``(H, W)`` of the image.

    Returns:
        ``B×D×H×W``.
    """
    h, w = size
    if embedding.shape[-2:] != (math.ceil(h / stride), math.ceil(w / stride)):
        raise ValueError(
            f"embedding {tuple(embedding.shape[-2:])} is not the stride-{stride} grid of {size}"
        )
    up = nnf.interpolate(embedding, scale_factor=stride, mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def smoothed_embedding(
    embedding: Tensor, size: tuple[int, int], smoothing: GaussianSmoothing
) -> Tensor:
    """``Ẽ``: the stride-4 embedding upsampled to ``size`` and smoothed (``B×D×H×W``)."""
    return smoothing(upsample_embedding(embedding, size))
