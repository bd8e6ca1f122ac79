"""Sampling a per-pixel map at sub-pixel points: the centres of paper Eq. 9.

Convention
    The paper samples at ``p̄ = 2p/(W−1, H−1) − 1`` with ``align_corners=True``, ``p`` in
    pixel-*index* units (pixel ``c``'s centre at ``c``). xmask points use the corner-origin
    grid of :mod:`xmask.geometry` (pixel ``c``'s centre at ``c + 0.5``), so the paper's ``p``
    is our ``x − 0.5``; we sample at :func:`xmask.geometry.points.normalized_coords` (``2x/W − 1``)
    with ``align_corners=False``, which addresses exactly the same sub-pixel position (tested).
    Bilinear interpolation, border padding (a point on the image border reads the border
    pixels, not zeros).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as nnf

from xmask.geometry.points import normalized_coords


def sample_centres(smoothed: Tensor, points: Tensor) -> Tensor:
    """Eq. 9: ``c_i``, the smoothed embedding bilinearly sampled at each point (sub-pixel).

    Args:
        smoothed: ``D×H×W`` (one image's ``Ẽ``).
        points: ``N×2`` ``(x, y)`` pixels (corner-origin grid).

    Returns:
        ``N×D``, differentiable w.r.t. ``smoothed`` (the four pixels around each point).
    """
    d, h, w = smoothed.shape
    if len(points) == 0:
        return smoothed.new_zeros(0, d)
    grid = normalized_coords(points.to(smoothed.dtype), (h, w)).view(1, 1, -1, 2)
    sampled = nnf.grid_sample(
        smoothed.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[0, :, 0].transpose(0, 1)


def sample_table(table: Tensor, points: Tensor) -> Tensor:
    """:func:`sample_centres` on a pixel-major ``H×W×D`` table (no gradients needed): the same
    bilinear read with border clamping, from the four pixels around each point.

    Args:
        table: ``H×W×D``.
        points: ``N×2`` ``(x, y)`` pixels.

    Returns:
        ``N×D``.
    """
    h, w, d = table.shape
    pts = points.to(device=table.device, dtype=table.dtype).reshape(-1, 2)
    ix = (pts[:, 0] - 0.5).clamp(0, w - 1)
    iy = (pts[:, 1] - 0.5).clamp(0, h - 1)
    x0, y0 = ix.floor().long(), iy.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    fx, fy = (ix - x0)[:, None], (iy - y0)[:, None]
    flat = table.reshape(-1, d)
    top = flat[y0 * w + x0] * (1 - fx) + flat[y0 * w + x1] * fx
    bottom = flat[y1 * w + x0] * (1 - fx) + flat[y1 * w + x1] * fx
    return top * (1 - fy) + bottom * fy
