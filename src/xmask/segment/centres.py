"""Differentiable centre sampling (paper Eq. 9).

Convention
    The paper samples at ``p̄ = 2p/(W−1, H−1) − 1`` with ``align_corners=True``, ``p`` in
    pixel-*index* units (pixel ``c``'s centre at ``c``). xmask points use the corner-origin
    grid of :mod:`xmask.geometry` (pixel ``c``'s centre at ``c + 0.5``), so the paper's ``p``
    is our ``x − 0.5``; we sample at :func:`xmask.geometry.normalized_coords` (``2x/W − 1``)
    with ``align_corners=False``, which addresses exactly the same sub-pixel position (tested).
    Bilinear interpolation, border padding (a point on the image border reads the border
    pixels, not zeros).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as nnf

from xmask.geometry import normalized_coords


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
