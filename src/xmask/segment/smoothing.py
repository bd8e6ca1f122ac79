"""Upsampling and depthwise separable Gaussian smoothing of the mask embedding (Eq. 2–5).

The stride-4 embedding is upsampled to image resolution and blurred channel by channel with a
fixed, normalised 1-D Gaussian along x, then along y; the loss (Eq. 10) and the instance
masks (Eq. 11–12) both read the smoothed map ``Ẽ``. Training uses ``k = 7, σ = 1.5``,
evaluation ``σ = 3`` (REFERENCE.md); both are configuration, not code.

Two implementations of the same linear map: :class:`GaussianSmoothing` after
:func:`upsample_embedding` is Eq. 4–5 as written (training, with gradients), and
:func:`smoothed_table` folds the upsampling and the smoothing of each axis into one banded
matrix (each output pixel a weighted sum of at most ``⌈(k − 1)/stride⌉ + 2`` cells) and
returns the pixel-major ``H×W×D`` table that Eq. 11 reads (inference and pseudo-masks,
one compiled pass per axis); a test holds them equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from xmask import kernels


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
    _check_grid(embedding, size, stride)
    h, w = size
    up = nnf.interpolate(embedding, scale_factor=stride, mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def _check_grid(embedding: Tensor, size: tuple[int, int], stride: int) -> None:
    """Raise ValueError unless the last two dimensions are the stride-``stride`` grid of
    ``size``."""
    h, w = size
    if embedding.shape[-2:] != (math.ceil(h / stride), math.ceil(w / stride)):
        raise ValueError(
            f"embedding {tuple(embedding.shape[-2:])} is not the stride-{stride} grid of {size}"
        )


def smoothed_embedding(
    embedding: Tensor, size: tuple[int, int], smoothing: GaussianSmoothing
) -> Tensor:
    """``Ẽ``: the stride-4 embedding upsampled to ``size`` and smoothed (``B×D×H×W``)."""
    return smoothing(upsample_embedding(embedding, size))


@dataclass(frozen=True)
class BandedAxis:
    """Upsampling by ``stride`` then smoothing, along one axis, as a banded matrix.

    Output pixel ``X`` is ``Σ_k weight[X, k] · cell[min(start[X] + k, n_cells − 1)]``.

    Attributes:
        start: ``n_pixels int64``, first cell of each output pixel's band.
        weight: ``n_pixels × band float64`` (0 past the last cell).
    """

    start: Tensor
    weight: Tensor


@lru_cache(maxsize=64)
def banded_axis(n_pixels: int, n_cells: int, stride: int, kernel: int, sigma: float) -> BandedAxis:
    """The :class:`BandedAxis` of linear upsampling (``align_corners=False``, cropped to
    ``n_pixels``) followed by the zero-padded Gaussian of Eq. 4 (or 5), built by applying
    both operations to the identity (so it equals them exactly, borders included)."""
    eye = torch.eye(n_cells, dtype=torch.float64)[None]
    up = nnf.interpolate(eye, scale_factor=stride, mode="linear", align_corners=False)
    up = up[0, :, :n_pixels].unsqueeze(1)
    g = gaussian_kernel1d(kernel, sigma, torch.float64).view(1, 1, kernel)
    matrix = nnf.conv1d(up, g, padding=kernel // 2)[:, 0].T  # n_pixels × n_cells
    nonzero = matrix != 0
    first = nonzero.to(torch.uint8).argmax(dim=1)
    last = n_cells - 1 - nonzero.flip(1).to(torch.uint8).argmax(dim=1)
    band = int((last - first).max()) + 1
    index = first[:, None] + torch.arange(band)
    weight = matrix.gather(1, index.clamp(max=n_cells - 1)) * (index < n_cells)
    return BandedAxis(first, weight)


def smoothed_table(
    embedding: Tensor, size: tuple[int, int], kernel: int, sigma: float, stride: int = 4
) -> Tensor:
    """``Ẽ`` of one image as an ``H×W×D`` table (pixel-major, the layout Eq. 11 reads), in
    one banded pass per axis (:func:`xmask.kernels.banded_rows`, on the CPU): equal to
    ``GaussianSmoothing(D, kernel, sigma)`` after :func:`upsample_embedding`, permuted.

    Memory: the table (``4·D`` bytes per pixel in ``float32``) and a quarter of it for the
    vertical pass, which runs first on the cells' columns.

    Args:
        embedding: ``D×h×w`` on the stride-``stride`` grid of ``size`` (any device; the
            result is on the CPU, in the embedding's floating dtype).
        size: ``(H, W)``.

    Returns:
        ``H×W×D``, contiguous.
    """
    if embedding.dim() != 3:
        raise ValueError(f"embedding must be D×h×w, got {tuple(embedding.shape)}")
    _check_grid(embedding, size, stride)
    h, w = size
    dim, cells_h, cells_w = embedding.shape
    cells = embedding.detach().cpu().permute(1, 2, 0).reshape(1, cells_h, cells_w * dim)
    down = _apply_axis(cells, banded_axis(h, cells_h, stride, kernel, sigma))  # 1×H×(w·D)
    return _apply_axis(
        down.reshape(h, cells_w, dim), banded_axis(w, cells_w, stride, kernel, sigma)
    )


def _apply_axis(x: Tensor, axis: BandedAxis) -> Tensor:
    """``axis`` applied along the middle dimension of the 3-D CPU tensor ``x``."""
    cells = np.ascontiguousarray(x.numpy())
    out = np.empty((cells.shape[0], len(axis.start), cells.shape[2]), dtype=cells.dtype)
    weight = axis.weight.to(x.dtype).numpy()
    kernels.banded_middle(cells, axis.start.numpy(), weight, out)
    return torch.from_numpy(out)
