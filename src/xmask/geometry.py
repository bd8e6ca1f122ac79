"""The pixel grid, NNEC radii (paper Eq. 1, 6) and circle pixels (Eq. 7).

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

NNEC (nearest-neighbour exclusion circle)
    ``r_i = min_{j≠i} ||p_i − p_j||`` (Eq. 1), one point alone gets ``0.5·min(H, W)`` (Eq. 6),
    then ``r_i`` is clamped to ``[r_min, 0.5·min(H, W)]``. ``C_i`` is the set of pixels whose
    *centre* lies within ``r_i`` of ``p_i`` (Eq. 7, distance ``<= r_i``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from scipy.spatial import cKDTree

from xmask import kernels

Points = TypeVar("Points", np.ndarray, torch.Tensor)
DuplicatePolicy = Literal["floor", "distinct"]


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


def _nearest_other(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (0 for exact duplicates); N >= 2."""
    dist, _ = cKDTree(points).query(points, k=2)
    return dist[:, 1]


def nnec_radii(
    points: np.ndarray,
    size: tuple[int, int],
    r_min: float = 3.0,
    duplicates: DuplicatePolicy = "floor",
    lone: float = 0.5,
) -> np.ndarray:
    """NNEC radius of every point (paper Eq. 1 and 6), with a k-d tree (no N×N matrix).

    Args:
        points: ``N×2``, ``(x, y)`` pixels, finite.
        size: ``(H, W)`` of the image.
        r_min: floor of the radius in pixels (the authors use 3).
        duplicates: exact duplicate points are at distance 0 from each other. ``"floor"``
            (Eq. 1 as written) gives them radius 0, raised to ``r_min``; ``"distinct"``
            measures each point to the nearest point at a *different* position, so copies of
            a head share that head's circle.
        lone: a point with no other (distinct) point gets ``lone·min(H, W)`` (Eq. 6: 0.5;
            the authors' mask builder: 0.25).

    Returns:
        ``N float32`` radii in ``[r_min, 0.5·min(H, W)]`` (the upper bound wins if smaller).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r_max = 0.5 * min(size)
    n = len(pts)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if duplicates == "distinct":
        unique, inverse = np.unique(pts, axis=0, return_inverse=True)
        single = lone * min(size)
        radii = _nearest_other(unique)[inverse.ravel()] if len(unique) > 1 else np.full(n, single)
    elif duplicates == "floor":
        radii = _nearest_other(pts) if n > 1 else np.full(1, lone * min(size))
    else:
        raise ValueError(f"duplicates must be 'floor' or 'distinct', got {duplicates!r}")
    return np.minimum(np.maximum(radii, r_min), r_max).astype(np.float32)


@dataclass
class CirclePixels:
    """The pixels of every circle ``C_i`` as one flat, ragged list (CSR layout).

    Memory is proportional to ``Σ r_i²``. Pixels of point ``i`` are the slice
    ``offsets[i]:offsets[i+1]`` of the flat arrays, in row-major order.

    Attributes:
        point: ``P int64``, index of the point each pixel belongs to.
        x: ``P int64``, pixel column.
        y: ``P int64``, pixel row.
        flat: ``P int64``, row-major pixel index ``y·W + x``.
        dist2: ``P float32``, squared distance from the pixel centre to its point (exact float32
            arithmetic, so identical on every device; Eq. 11 uses it directly).
        offsets: ``N+1 int64``.
        size: ``(H, W)`` of the image.
    """

    point: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    flat: torch.Tensor
    dist2: torch.Tensor
    offsets: torch.Tensor
    size: tuple[int, int]

    @property
    def counts(self) -> torch.Tensor:
        """``N int64``: number of pixels in each circle."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return int(self.point.numel())


def circle_pixels(
    points: np.ndarray | torch.Tensor,
    radii: np.ndarray | torch.Tensor,
    size: tuple[int, int],
) -> CirclePixels:
    """Pixels whose centre lies within ``radii[i]`` of ``points[i]`` (Eq. 7), clipped to the image.

    One compiled pass over the circles' bounding boxes (:mod:`xmask.kernels`), so time and
    memory are ``O(Σ r_i²)``; computed on the CPU and returned on the device of ``points``
    when it is a tensor.

    Args:
        points: ``N×2``, ``(x, y)`` pixels.
        radii: ``N`` radii in pixels.
        size: ``(H, W)``.
    """
    device = points.device if isinstance(points, torch.Tensor) else torch.device("cpu")
    pts = _cpu_float32(points).reshape(-1, 2)
    rad = _cpu_float32(radii).reshape(-1)
    h, w = size
    counts = kernels.circle_counts(pts, rad, h, w)
    offsets = np.zeros(len(pts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    owner = np.empty(total, np.int64)
    xs, ys, flat = np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.int64)
    dist2 = np.empty(total, np.float32)
    kernels.circle_fill(pts, rad, h, w, offsets, owner, xs, ys, flat, dist2)
    arrays = (owner, xs, ys, flat, dist2, offsets)
    point, x, y, flat_index, d2, off = (torch.from_numpy(a).to(device) for a in arrays)
    return CirclePixels(point, x, y, flat_index, d2, off, (h, w))


def _cpu_float32(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A contiguous ``float32`` NumPy copy (or view) of ``values``, from any device."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(values, dtype=np.float32)


def label_map(
    pixels: CirclePixels,
    cost: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Instance label map from circle pixels: every pixel goes to exactly one point.

    Overlap rule: a pixel claimed by several circles goes to the point of lowest ``cost``
    (ties to the lowest point index). The default cost is the squared distance from the pixel
    centre to each point, so the nearest head wins (a Voronoi split of the overlap).

    Args:
        pixels: from :func:`circle_pixels`.
        cost: ``P`` float, lower wins, never NaN; defaults to ``pixels.dist2``.
        keep: ``P`` bool, pixels that may be labelled at all (e.g. inside a SAM mask); the only
            way to leave a circle pixel unlabelled (an infinite cost still labels it).

    Returns:
        ``H×W int32`` map, 0 = background, ``i + 1`` = point ``i``.
    """
    h, w = pixels.size
    cost = pixels.dist2 if cost is None else cost
    allowed = torch.ones_like(pixels.point, dtype=torch.bool) if keep is None else keep
    labels, _ = kernels.lowest_cost_labels(
        pixels.flat.cpu().numpy(),
        pixels.point.cpu().numpy(),
        _cpu_float32(cost),
        allowed.cpu().numpy(),
        h * w,
        len(pixels.offsets) - 1,
    )
    return torch.from_numpy(labels).reshape(h, w).to(pixels.point.device)
