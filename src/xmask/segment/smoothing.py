"""Upsampling and depthwise separable Gaussian smoothing of the mask embedding (Eq. 2–5).

The stride-4 embedding is upsampled to image resolution and blurred channel by channel with a
fixed, normalised 1-D Gaussian along x, then along y; the loss (Eq. 10) and the instance
masks (Eq. 11–12) both read the smoothed map ``Ẽ``. Training uses ``k = 7, σ = 1.5``,
evaluation ``σ = 3`` (the authors' code); both are configuration, not code.

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

from xmask.geometry import kernels


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
    ``n_pixels``) followed by the zero-padded Gaussian of Eq. 4 (or 5), from their closed
    forms in ``O(n_pixels · k)`` time and ``O(n_pixels · band)`` memory.

    Upsampled pixel ``Y`` reads cells ``i0 = ⌊s⌋`` and ``min(i0 + 1, n_cells − 1)`` with
    weights ``1 − (s − i0)`` and ``s − i0``, where ``s = max((Y + ½)/stride − ½, 0)``
    (PyTorch's rule); output pixel ``X`` is ``Σ_t g[t] · up[X + t − ⌊k/2⌋]`` over the
    upsampled pixels inside ``[0, n_pixels)``. A test holds the result equal to running both
    operations.
    """
    g = gaussian_kernel1d(kernel, sigma, torch.float64).numpy()
    pixel = np.arange(n_pixels)
    src = np.maximum((pixel + 0.5) / stride - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_cells - 1)
    high = np.minimum(low + 1, n_cells - 1)
    frac = src - low
    half = kernel // 2
    first = low[np.clip(pixel - half, 0, n_pixels - 1)]  # low never decreases along the axis
    band = int((high[np.clip(pixel + half, 0, n_pixels - 1)] - first).max()) + 1
    weight = np.zeros((n_pixels, band))
    for tap in range(kernel):
        source = pixel + tap - half
        inside = (source >= 0) & (source < n_pixels)
        out, up = pixel[inside], source[inside]
        weight[out, low[up] - first[out]] += g[tap] * (1.0 - frac[up])
        weight[out, high[up] - first[out]] += g[tap] * frac[up]
    return BandedAxis(torch.from_numpy(first), torch.from_numpy(weight))


def smoothed_table(
    embedding: Tensor,
    size: tuple[int, int],
    kernel: int,
    sigma: float,
    stride: int = 4,
    out: np.ndarray | None = None,
    needed: np.ndarray | None = None,
) -> Tensor:
    """``Ẽ`` of one image as an ``H×W×D`` table (pixel-major, the layout Eq. 11 reads), in
    one banded pass per axis (:func:`xmask.geometry.kernels.banded_middle`, on the CPU): equal to
    ``GaussianSmoothing(D, kernel, sigma)`` after :func:`upsample_embedding`, permuted.

    Memory: the table (``4·D`` bytes per pixel in ``float32``) and a quarter of it for the
    vertical pass, which runs first on the cells' columns.

    Args:
        embedding: ``D×h×w`` on the stride-``stride`` grid of ``size`` (any device; the
            result is on the CPU, in the embedding's floating dtype).
        size: ``(H, W)``.
        out: an ``H×W×D`` C-contiguous array of the embedding's dtype to write into (a buffer
            reused from image to image saves the first-touch cost of a fresh table).
        needed: ``H×W bool``, the pixels the caller will read (None: all); the others are
            left unspecified (:func:`xmask.geometry.kernels.banded_middle`).

    Returns:
        ``H×W×D``, contiguous (a view of ``out`` when given).
    """
    if embedding.dim() != 3:
        raise ValueError(f"embedding must be D×h×w, got {tuple(embedding.shape)}")
    _check_grid(embedding, size, stride)
    h, w = size
    dim, cells_h, cells_w = embedding.shape
    cells = embedding.detach().cpu().permute(1, 2, 0).reshape(1, cells_h, cells_w * dim)
    down = _apply_axis(cells, banded_axis(h, cells_h, stride, kernel, sigma))  # 1×H×(w·D)
    across = banded_axis(w, cells_w, stride, kernel, sigma)
    return _apply_axis(down.reshape(h, cells_w, dim), across, out, needed)


def _apply_axis(
    x: Tensor, axis: BandedAxis, out: np.ndarray | None = None, needed: np.ndarray | None = None
) -> Tensor:
    """``axis`` applied along the middle dimension of the 3-D CPU tensor ``x``."""
    cells = np.ascontiguousarray(x.numpy())
    shape = (cells.shape[0], len(axis.start), cells.shape[2])
    if out is None:
        out = np.empty(shape, dtype=cells.dtype)
    elif out.shape != shape or out.dtype != cells.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {shape} {cells.dtype} array")
    weight = axis.weight.to(x.dtype).numpy()
    kernels.banded_middle(cells, axis.start.numpy(), weight, out, needed)
    return torch.from_numpy(out)
