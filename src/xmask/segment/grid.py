"""Eq. 11–12 on a coarser grid: each segmentation pixel a ``g×g`` block of image pixels.

The full-resolution masks (``g = 1``) upsample the stride-4 embedding to every pixel and
smooth it there (Eq. 2–5), then label every circle pixel. With ``g = 2`` or ``4`` the same
steps run on an image ``g`` times smaller along each side, whose embedding cells are
``4 / g`` of its pixels (at ``g = 4`` the embedding's own grid, no upsampling), with the
lengths of :class:`~xmask.segment.instances.SegmentConfig` scaled by ``1 / g`` (σ, the kernel,
``r_min``; λ and ``τ_g`` act on normalised quantities and stay). The labels are then repeated
``g×g`` and cropped to the image: about ``g²`` times less work after the network, coarser
mask edges (README, "Masks on a coarser grid", measures both).

Coherence holds as at full resolution: on the grid the points are first made distinct
(:func:`~xmask.geometry.points.distinct_pixels`) and each head's region is one 4-connected
piece holding its grid pixel, holes filled; repeated, a region stays one piece and holds its
head's image point. Where a head's point ends in another head's block (two heads in one
block), the point pixel is given back to its head and :func:`~xmask.geometry.labels.
connected_masks` mends those heads and the ones whose pixels they took.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from torch import Tensor

from xmask.geometry.labels import connected_masks
from xmask.geometry.points import distinct_pixels, pixel_of
from xmask.segment.instances import SegmentConfig
from xmask.segment.windows import CORE, STRIDE, TableBuffer, segment_in_windows

GRIDS = (1, 2, 4)
"""Block sides ``g`` the embedding's stride (4) allows."""


def grid_config(cfg: SegmentConfig, grid: int) -> SegmentConfig:
    """``cfg`` for pixels ``grid`` times larger: σ and ``r_min`` divided by ``grid``, the kernel
    the odd size nearest to ``kernel / grid`` (at least 3), each mask connected."""
    half = max(1, round((cfg.kernel // 2) / grid))
    return replace(
        cfg, sigma=cfg.sigma / grid, kernel=2 * half + 1, r_min=cfg.r_min / grid, connected=True
    )


def segment_on_grid(
    embedding: Tensor,
    size: tuple[int, int],
    points: np.ndarray,
    cfg: SegmentConfig,
    grid: int,
    core: int = CORE,
    buffer: TableBuffer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every head segmented on blocks of ``grid×grid`` pixels (module docstring).

    Args:
        embedding: the stride-4 ``D×h×w`` mask embedding of an image of ``size = (H, W)``.
        points: ``N×2`` ``(x, y)`` pixels inside the image.
        cfg: the full-resolution constants (:func:`grid_config` scales them).
        grid: the block side, one of :data:`GRIDS`.
        core: core side in image pixels (:mod:`xmask.segment.windows`; a multiple of 4).

    Returns:
        ``(H×W int32 labels, N int64 areas)``: 0 background, ``k`` = ``points[k − 1]``, each
        mask one 4-connected region holding its point.

    Raises:
        ValueError: ``grid`` not in :data:`GRIDS`.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid}")
    height, width = size
    small = (math.ceil(height / grid), math.ceil(width / grid))
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    limit = np.array([small[1], small[0]], dtype=np.float32)
    on_grid = distinct_pixels(np.minimum(pts / grid, limit), small)
    instances = segment_in_windows(
        embedding,
        small,
        on_grid,
        None,
        grid_config(cfg, grid),
        core // grid,
        buffer,
        STRIDE // grid,
    )
    labels = np.repeat(np.repeat(instances.labels, grid, axis=0), grid, axis=1)
    labels = np.ascontiguousarray(labels[:height, :width])
    if len(pts) == 0:
        return labels, np.zeros(0, dtype=np.int64)
    cell = pixel_of(pts, size)
    own = np.arange(1, len(pts) + 1, dtype=np.int32)
    before = labels[cell[:, 1], cell[:, 0]]
    if np.array_equal(before, own):
        return labels, np.bincount(labels.ravel(), minlength=len(pts) + 1)[1:].astype(np.int64)
    order = np.arange(len(pts))[::-1]  # lowest index last: it keeps a shared pixel
    labels[cell[order, 1], cell[order, 0]] = own[order]
    moved = before != own  # these and the heads whose pixel they took may break the rule
    heads = np.union1d(np.flatnonzero(moved), before[moved & (before > 0)] - 1)
    return connected_masks(labels, pts, heads)
