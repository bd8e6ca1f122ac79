"""The pixel grid and the coordinate conventions of points.

Every part of xmask (annotation, losses, pseudo-labels, inference, metrics) takes its geometry
from this module, so the conventions below hold everywhere.

Coordinates
    Points are ``N×2`` arrays in ``(x, y)`` order, in pixels of the image they belong to.

Pixel grid (corner origin, continuous)
    Pixel (row ``r``, column ``c``) is the unit square ``[c, c+1) × [r, r+1)``; its centre is
    ``(c + 0.5, r + 0.5)``. A point ``(x, y)`` lies in pixel ``(floor(y), floor(x))``. The image
    covers ``[0, W] × [0, H]``; a point is inside iff ``0 <= x <= W`` and ``0 <= y <= H`` (a point
    exactly on the right or bottom border belongs to the last pixel).

    Under this grid, resizing an image by ``s`` with ``align_corners=False`` interpolation maps
    ``x`` to ``x·s``; a horizontal flip maps ``x`` to ``W − x``; a crop at ``(left, top)`` maps
    ``x`` to ``x − left``; and ``grid_sample(..., align_corners=False)`` addresses ``x`` at
    normalised ``2x/W − 1``. A stride-``s`` cell ``(i, j)`` covers pixels ``[s·j, s·j+s)`` and has
    its centre at ``(s·j + s/2, s·i + s/2)``.

    torchvision's ``KeyPoints`` mixes two grids (0.29 flips as ``W − 1 − x`` but resizes as
    ``x·s``), so xmask transforms points with the functions here, never with torchvision.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from scipy.spatial import cKDTree

Points = TypeVar("Points", np.ndarray, torch.Tensor)


def _copy(points: Points) -> Points:
    """A floating-point copy (integer input is promoted, so in-place ``*=``/``+=`` work)."""
    if isinstance(points, torch.Tensor):
        if points.is_floating_point():
            return points.clone()
        return points.to(torch.get_default_dtype())
    out = np.array(points, copy=True)
    return out if np.issubdtype(out.dtype, np.floating) else out.astype(np.float64)


def inside_image(points: Points, size: tuple[int, int]) -> Points:
    """Which points lie in the image.

    Args:
        points: ``N×2``, ``(x, y)`` pixels (array or tensor, any device).
        size: ``(H, W)``.

    Returns:
        ``N`` bool of the input's kind; False for NaN coordinates and for points outside
        ``[0, W] × [0, H]``.
    """
    h, w = size
    x, y = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        return (x >= 0) & (x <= w) & (y >= 0) & (y <= h)


def pixel_of(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pixel each finite point lies in, as ``N×2 int64`` ``(column, row)``, clipped into the
    image (so points on the right or bottom border map to the last column or row)."""
    h, w = size
    idx = np.floor(np.asarray(points, dtype=np.float64)).astype(np.int64)
    idx[:, 0] = np.clip(idx[:, 0], 0, w - 1)
    idx[:, 1] = np.clip(idx[:, 1], 0, h - 1)
    return idx


def scale_points(points: Points, sx: float, sy: float | None = None) -> Points:
    """Points of an image resized by ``(sx, sy)`` (``sy`` defaults to ``sx``): ``(x·sx, y·sy)``."""
    out = _copy(points)
    out[:, 0] *= sx
    out[:, 1] *= sx if sy is None else sy
    return out


def flip_points_horizontal(points: Points, width: int) -> Points:
    """Points of an image of ``width`` columns mirrored left-right: ``x → W − x``."""
    out = _copy(points)
    out[:, 0] = width - out[:, 0]
    return out


def translate_points(points: Points, dx: float, dy: float) -> Points:
    """Points shifted by ``(dx, dy)``: a crop at ``(left, top)`` is ``dx=-left, dy=-top``."""
    out = _copy(points)
    out[:, 0] += dx
    out[:, 1] += dy
    return out


def normalized_coords(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N×2`` ``(x, y)`` pixels → ``grid_sample`` coordinates for ``align_corners=False``.

    ``(2x/W − 1, 2y/H − 1)``: the centre of pixel ``(r, c)`` samples exactly that pixel.
    """
    h, w = size
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=points.dtype, device=points.device)
    return points * scale - 1.0


def cell_centres(
    grid: tuple[int, int], stride: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Centres of the cells of a stride-``stride`` grid of ``grid = (h, w)`` cells.

    Returns:
        ``(h·w)×2 float32`` ``(x, y)`` pixels in row-major cell order: cell ``(i, j)`` is row
        ``i·w + j`` with centre ``(stride·j + stride/2, stride·i + stride/2)``.
    """
    h, w = grid
    half = stride / 2.0
    xs = torch.arange(w, dtype=torch.float32, device=device) * stride + half
    ys = torch.arange(h, dtype=torch.float32, device=device) * stride + half
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def nearest_point(
    queries: np.ndarray, points: np.ndarray, max_distance: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of ``points`` to each query, with a k-d tree (no Q×N matrix).

    Args:
        queries: ``Q×2`` ``(x, y)``.
        points: ``N×2`` ``(x, y)``.
        max_distance: queries with no point strictly closer than this get index ``-1``.

    Returns:
        ``(Q int64 index or -1, Q float64 distance or inf)``; among equidistant points any one.
    """
    q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.full(len(q), -1, dtype=np.int64), np.full(len(q), np.inf)
    tree = cKDTree(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    dist, index = tree.query(q, k=1, distance_upper_bound=max_distance)
    missing = ~np.isfinite(dist)
    index = np.where(missing, -1, index).astype(np.int64)
    return index, dist


def duplicate_mask(points: np.ndarray, include_first: bool = False) -> np.ndarray:
    """``N`` bool: points whose exact coordinates another point of the set repeats.

    Args:
        points: ``N×2``.
        include_first: mark every point of a repeated position (True), or only the copies after
            its first occurrence (False, so ``N − mask.sum()`` is the number of positions).
    """
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, first, inverse, counts = np.unique(
        np.asarray(points), axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    if include_first:
        return counts[inverse.ravel()] > 1
    mask = np.ones(n, dtype=bool)
    mask[first] = False
    return mask


FREE_PIXEL_RING = 3
"""How far (square rings around its pixel) :func:`distinct_pixels` looks for a free pixel."""


def distinct_pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Points moved so that no two lie in one pixel: a point whose pixel (:func:`pixel_of`)
    an earlier point holds goes to the centre of the nearest pixel no point holds (the nearest
    to it in the smallest square ring around its pixel that has one, up to
    :data:`FREE_PIXEL_RING` rings: at most 48 pixels looked at per point moved; a point with
    none free that near stays where it is). Points decoded on an enlarged network input can
    round into one image pixel; two heads cannot both own it.

    Args:
        points: ``N×2`` ``(x, y)`` pixels of an image of ``size = (H, W)``.

    Returns:
        ``N×2 float32``, the input's values where no pixel is shared; ``points`` is not
        modified.
    """
    out = np.asarray(points, dtype=np.float32).reshape(-1, 2).copy()
    h, w = size
    cells = pixel_of(out, size)
    flat = cells[:, 1] * w + cells[:, 0]
    later = np.ones(len(flat), dtype=bool)
    later[np.unique(flat, return_index=True)[1]] = False
    moved = np.flatnonzero(later)  # a pixel's later points
    if len(moved) == 0:
        return out
    taken = set(flat.tolist())
    for k in moved.tolist():
        col, row = int(cells[k, 0]), int(cells[k, 1])
        for ring in range(1, FREE_PIXEL_RING + 1):
            free = [
                (float((c + 0.5 - out[k, 0]) ** 2 + (r + 0.5 - out[k, 1]) ** 2), r, c)
                for r in range(max(0, row - ring), min(h, row + ring + 1))
                for c in range(max(0, col - ring), min(w, col + ring + 1))
                if max(abs(r - row), abs(c - col)) == ring and r * w + c not in taken
            ]
            if free:
                _, r, c = min(free)
                taken.add(r * w + c)
                out[k] = (c + 0.5, r + 0.5)
                break
    return out
