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
connected_masks` mends those heads and the ones whose pixels they took, on the part of the
image that holds every box the mending can change (not the whole image: on a 1,603-head
image at ``g = 4`` that took a third of the time after the network).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from torch import Tensor

from xmask.geometry.labels import connected_masks
from xmask.geometry.points import distinct_pixels, pixel_of
from xmask.segment.instances import Instances, SegmentConfig
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
    return repeat_and_mend(instances, grid, size, pts)


def repeat_and_mend(
    small: Instances, grid: int, size: tuple[int, int], points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the grid brought to the image: each repeated over its ``grid×grid`` block,
    every head's point pixel given back to it, the heads this breaks mended.

    Args:
        small: the heads segmented on the grid (``h×w`` labels, ``h = ⌈H / grid⌉``; each head
            one 4-connected region inside its circle, no background region enclosed by one
            head alone).
        size: ``(H, W)`` of the image.
        points: ``N×2`` ``(x, y)`` image pixels of the heads.

    Returns:
        ``(H×W int32 labels, N int64 areas)``, as :func:`segment_on_grid`.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    labels = _repeated(small.labels, grid, size)
    areas = _block_areas(small.labels, grid, size, len(pts))
    if len(pts) == 0:
        return labels, areas
    cell = pixel_of(pts, size)
    own = np.arange(1, len(pts) + 1, dtype=np.int32)
    before = labels[cell[:, 1], cell[:, 0]]
    moved = before != own  # these and the heads whose pixel they took may break the rule
    if not moved.any():
        return labels, areas
    heads = np.union1d(np.flatnonzero(moved), before[moved & (before > 0)] - 1)
    y0, y1, x0, x1 = _mend_box(small, grid, size, cell, heads)
    window = labels[y0:y1, x0:x1]
    areas -= np.bincount(window.ravel(), minlength=len(pts) + 1)[1:]
    order = np.arange(len(pts))[::-1]  # lowest index last: it keeps a shared pixel
    labels[cell[order, 1], cell[order, 0]] = own[order]
    mended, _ = connected_masks(window, pts - np.array([x0, y0], dtype=np.float32), heads)
    labels[y0:y1, x0:x1] = mended
    areas += np.bincount(mended.ravel(), minlength=len(pts) + 1)[1:]
    return labels, areas


def _repeated(small: np.ndarray, grid: int, size: tuple[int, int]) -> np.ndarray:
    """``H×W int32``: each label of the ``h×w`` map ``small`` repeated over its ``grid×grid``
    block, cropped to ``size = (H, W)``."""
    height, width = size
    labels = np.repeat(np.repeat(small, grid, axis=0), grid, axis=1)
    return np.ascontiguousarray(labels[:height, :width], dtype=np.int32)


def _block_areas(small: np.ndarray, grid: int, size: tuple[int, int], n: int) -> np.ndarray:
    """``N int64``: pixels of each head in :func:`_repeated` ``(small)``, from the small map
    (the last row and column of blocks are cut by the image's border)."""
    rows = np.minimum(grid, size[0] - grid * np.arange(small.shape[0]))
    cols = np.minimum(grid, size[1] - grid * np.arange(small.shape[1]))
    weights = (rows[:, None] * cols[None, :]).ravel().astype(np.float64)
    counts = np.bincount(small.ravel(), weights=weights, minlength=n + 1)[1:]
    return np.rint(counts).astype(np.int64)


def _mend_box(
    small: Instances, grid: int, size: tuple[int, int], cell: np.ndarray, heads: np.ndarray
) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: a part of the image outside which mending ``heads`` changes
    nothing, so that :func:`~xmask.geometry.labels.connected_masks` runs on it alone.

    Mending drops pieces of ``heads`` (inside their boxes, which hold their point pixels) and
    fills holes of them and of the heads next to a dropped pixel (inside those heads' boxes).
    The part holds the boxes of ``heads`` and a pixel beyond, and the boxes of every head in
    that, so every neighbour of a dropped pixel and its box. A head's box is bounded by its
    circle on the grid (its region lies inside it) and its point pixel."""
    own = _boxes(small, grid, cell, heads) + np.array([-1, -1, 1, 1])
    y0, y1, x0, x1 = _union(own, size)
    near = np.unique(small.labels[y0 // grid : -(-y1 // grid), x0 // grid : -(-x1 // grid)])
    return _union(np.concatenate([own, _boxes(small, grid, cell, near[near > 0] - 1)]), size)


def _boxes(small: Instances, grid: int, cell: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """``M×4 int64`` ``(x0, y0, x1, y1)`` image pixels (half open) holding each of ``heads``'
    circle on the grid and its point pixel ``cell``."""
    centre = small.points[heads].astype(np.float64)
    reach = small.radii[heads, None].astype(np.float64) + 1.0
    low = np.minimum(np.floor(centre - reach) * grid, cell[heads])
    high = np.maximum((np.ceil(centre + reach) + 1) * grid, cell[heads] + 1)
    return np.concatenate([low, high], axis=1).astype(np.int64)


def _union(boxes: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the box holding ``boxes`` (:func:`_boxes`), inside the image."""
    x0, y0 = np.maximum(boxes[:, :2].min(axis=0), 0)
    x1, y1 = np.minimum(boxes[:, 2:].max(axis=0), (size[1], size[0]))
    return int(y0), int(y1), int(x0), int(x1)
