"""NNEC circles: how far a head's mask may reach (paper Eq. 1, 6, 7) and ``R_MIN``.

Every part of xmask that bounds a head's region (annotation backends, pseudo-masks, the
discriminative loss, inference) takes it from here, so the rule is defined once.

NNEC (nearest-neighbour exclusion circle)
    ``r_i = min_{j≠i} ||p_i − p_j||`` (Eq. 1), one point alone gets ``lone·min(H, W)`` (Eq. 6:
    ``lone = 0.5``), then ``r_i`` is clamped to ``[R_MIN, 0.5·min(H, W)]``. ``C_i`` is the set of
    pixels whose *centre* lies within ``r_i`` of ``p_i`` (Eq. 7, distance ``<= r_i``), held as
    one flat ragged list (:class:`CirclePixels`, memory ``∝ Σ r_i²``, never heads × H × W).

Head-sized prior (optional, ``size_prior``)
    Eq. 1 bounds a head by its neighbour only: a head far from the others gets a huge circle,
    where the distance term of Eq. 11 hardly constrains anything. With ``size_prior = κ`` the
    radius is also at most ``κ`` times the head's size (:func:`head_sizes`: the crowd's spacing
    along the image's perspective), so a lone head's region stays head-sized.

Duplicates policy
    Duplicates are 0 apart: ``"floor"`` (Eq. 1 as written) gives them ``R_MIN``; ``"distinct"``
    (:func:`head_circles`) measures to the nearest *other position*: each copy gets the circle.

Co-located heads
    ``k >= 2`` points in one pixel (exact duplicates, or two clicks closer than a pixel) share
    one circle instead of holding ``k`` copies of it (70,000 copies of one point would otherwise
    need ``70,000 × π r²`` entries): the circle of the first of them (lowest index, the
    *leader*) is computed once; its pixels other than the point pixel, ordered by angle around
    the leader's point (``atan2(dy, dx)`` from the pixel centre, ties in row-major order), are
    cut into ``k`` runs of equal count, and the member of rank ``m`` (by index within the group)
    holds only run ``m`` (those pixels within its own radius, distances to its own point); the
    leader keeps run 0 and the point pixel. Memory stays ``∝ Σ`` over occupied pixels of
    ``r²``, whatever the number of points. :mod:`xmask.geometry.labels` gives the point pixel to
    the leader and seeds the others.

Point pixel
    The pixel containing ``p_i`` (:func:`xmask.geometry.points.pixel_of`) is head ``i``'s own
    pixel (:attr:`HeadCircles.own`); :mod:`xmask.geometry.labels` always gives it to the head.
    Needs ``min(H, W) >= 2`` (so that ``r_i >= 1`` puts the point pixel's centre inside ``C_i``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from xmask.geometry import raster
from xmask.geometry.points import pixel_of

R_MIN = 3.0
"""Smallest NNEC radius in pixels (the authors' code)."""

DuplicatePolicy = Literal["floor", "distinct"]
BANDS, QUANTILE = 8, 0.25
""":func:`head_sizes`: horizontal bands of the perspective fit, and the spacing quantile."""


def _nearest_other(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (0 for exact duplicates); N >= 2."""
    dist, _ = cKDTree(points).query(points, k=2)
    return dist[:, 1]


def head_sizes(
    points: np.ndarray, size: tuple[int, int], bands: int = BANDS, quantile: float = QUANTILE
) -> np.ndarray:
    """How large each head is, from the crowd's own spacing and its perspective (pixels).

    Heads in a crowd are about as wide as the distance between neighbours, and they grow
    toward the camera. The image is cut into ``bands`` horizontal bands; in each band holding
    at least 5 points the ``quantile`` of the nearest-neighbour distances (low, so that the
    packed part of the band speaks) is its head size at the band's median row; a line fitted
    through those sizes (weighted by the points of each band) gives every point a size at its
    row, kept within half the smallest and twice the largest band size. With fewer than two
    such bands one size serves the whole image (the ``quantile`` of all distances); with fewer
    than two distinct points there is nothing to measure and every size is infinite.

    Args:
        points: ``N×2`` ``(x, y)`` pixels.
        size: ``(H, W)`` of the image.

    Returns:
        ``N float32`` sizes, at least :data:`R_MIN`.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return _fitted_sizes(pts, _distinct_spacing(pts), size, bands, quantile)


def _distinct_spacing(pts: np.ndarray) -> np.ndarray | None:
    """``N float64``: each point's distance to the nearest point at another position; None
    with fewer than two distinct positions."""
    unique, inverse = np.unique(pts, axis=0, return_inverse=True)
    return _nearest_other(unique)[inverse.ravel()] if len(unique) > 1 else None


def _fitted_sizes(
    pts: np.ndarray, spacing: np.ndarray | None, size: tuple[int, int], bands: int, quantile: float
) -> np.ndarray:
    """:func:`head_sizes` from the points' distinct spacing (:func:`_distinct_spacing`)."""
    if spacing is None:
        return np.full(len(pts), np.inf, dtype=np.float32)
    band = np.minimum((pts[:, 1] / max(size[0], 1) * bands).astype(np.int64), bands - 1)
    rows, sizes, weights = [], [], []
    for b in range(bands):
        members = band == b
        if members.sum() >= 5:
            rows.append(np.median(pts[members, 1]))
            sizes.append(np.quantile(spacing[members], quantile))
            weights.append(members.sum())
    if len(sizes) < 2:
        fitted = np.full(len(pts), np.quantile(spacing, quantile))
    else:
        slope, intercept = np.polyfit(rows, sizes, 1, w=np.sqrt(weights))
        fitted = np.clip(intercept + slope * pts[:, 1], 0.5 * min(sizes), 2.0 * max(sizes))
    return np.maximum(fitted, R_MIN).astype(np.float32)


def nnec_radii(
    points: np.ndarray,
    size: tuple[int, int],
    r_min: float = R_MIN,
    duplicates: DuplicatePolicy = "floor",
    lone: float = 0.5,
    size_prior: float | None = None,
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
        size_prior: the head-sized prior: no radius beyond ``size_prior`` times the head's
            size (:func:`head_sizes`), so a head far from its neighbours does not claim a huge
            circle; None: Eq. 1 alone.

    Returns:
        ``N float32`` radii in ``[r_min, 0.5·min(H, W)]`` (the upper bound wins if smaller).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r_max = 0.5 * min(size)
    n = len(pts)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if duplicates not in ("floor", "distinct"):
        raise ValueError(f"duplicates must be 'floor' or 'distinct', got {duplicates!r}")
    spacing = _distinct_spacing(pts) if duplicates == "distinct" or size_prior else None
    if duplicates == "distinct":
        radii = np.full(n, lone * min(size)) if spacing is None else spacing
    else:
        radii = _nearest_other(pts) if n > 1 else np.full(1, lone * min(size))
    if size_prior is not None:
        radii = np.minimum(radii, size_prior * _fitted_sizes(pts, spacing, size, BANDS, QUANTILE))
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

    One vectorised pass over the circles' rows (:func:`xmask.geometry.raster.circle_table`), so
    time and memory are ``O(Σ r_i²)``; computed on the CPU and returned on the device of ``points``
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
    offsets, owner, xs, ys, flat, dist2 = raster.circle_table(pts, rad, h, w)
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
    labels, _ = raster.lowest_cost_labels(
        pixels.flat.cpu().numpy(),
        pixels.point.cpu().numpy(),
        _cpu_float32(cost),
        allowed.cpu().numpy(),
        h * w,
        len(pixels.offsets) - 1,
    )
    return torch.from_numpy(labels).reshape(h, w).to(pixels.point.device)


@dataclass
class HeadCircles:
    """The NNEC circles of one image's heads.

    Attributes:
        points: ``N×2 float32``, ``(x, y)`` pixels.
        radii: ``N float32`` NNEC radii ``r_i``.
        pixels: circle pixels, flat CSR list of ``P`` entries (CPU tensors).
        point_pixel: ``N int64`` row-major index ``y·W + x`` of the pixel holding each point.
        own: ``P bool``, the entry of each head's own point pixel in ``pixels``.
    """

    points: np.ndarray
    radii: np.ndarray
    pixels: CirclePixels
    point_pixel: np.ndarray
    own: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self.pixels.size

    def __len__(self) -> int:
        return int(self.points.shape[0])


def check_points(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``points`` as ``N×2 float32``, checked to be finite and inside ``[0, W] × [0, H]``.

    Raises:
        ValueError: wrong shape, NaN/inf, or a point outside the image (readers drop those).
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    h, w = size
    bad = ~(np.isfinite(pts).all(axis=1) & (pts[:, 0] >= 0) & (pts[:, 0] <= w))
    bad |= ~((pts[:, 1] >= 0) & (pts[:, 1] <= h))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} point(s) not finite or outside the {w}×{h} image, "
            f"first: #{first} {pts[first].tolist()}"
        )
    return pts


def head_circles(
    points: np.ndarray,
    size: tuple[int, int],
    *,
    r_min: float = R_MIN,
    lone: float = 0.5,
    duplicates: DuplicatePolicy = "distinct",
    size_prior: float | None = None,
) -> HeadCircles:
    """NNEC radii and circle pixels of every head (see the module docstring for the policies).

    Args:
        points: ``N×2``, ``(x, y)`` pixels inside the image.
        size: ``(H, W)``.
        r_min: floor of the radius in pixels.
        duplicates: policy for exact duplicate points (:func:`xmask.geometry.circles.nnec_radii`).
        lone: radius of a point alone in the image, as a fraction of ``min(H, W)``.
        size_prior: no radius beyond this many head sizes (:func:`nnec_radii`), or None.
    """
    pts = check_points(points, size)
    radii = nnec_radii(
        pts, size, r_min=r_min, duplicates=duplicates, lone=lone, size_prior=size_prior
    )
    return circles_of(pts, radii, size)


def circle_options(cfg: Any) -> dict[str, Any]:
    """The circle settings (``r_min``, ``duplicates``, ``size_prior``) of an annotation backend's
    config, as keyword arguments of :func:`head_circles` and :func:`nnec_radii`."""
    return {"r_min": cfg.r_min, "duplicates": cfg.duplicates, "size_prior": cfg.size_prior}


def pixel_groups(point_pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(members, rank, leader)``, each ``N int64``: how many points share each point's
    pixel, the point's rank among them by index, and the index of their rank-0 member."""
    n = len(point_pixel)
    _, group, size = np.unique(point_pixel, return_inverse=True, return_counts=True)
    group = group.ravel()
    by_group = np.lexsort((np.arange(n), group))
    first = np.searchsorted(group[by_group], group[by_group], side="left")
    rank, leader = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - first
    leader[by_group] = by_group[first]
    return size[group].astype(np.int64), rank, leader


def circles_of(points: np.ndarray, radii: np.ndarray, size: tuple[int, int]) -> HeadCircles:
    """The circles of heads whose radii are already known (``N×2 float32`` ``(x, y)`` points
    inside the image, ``N`` radii; e.g. one window of a large image, radii from the whole);
    co-located heads share one (module docstring)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.float32).reshape(-1)
    cell = pixel_of(pts, size)
    point_pixel = cell[:, 1] * size[1] + cell[:, 0]
    members, rank, leader = pixel_groups(point_pixel)
    if (members == 1).all():
        pixels = circle_pixels(pts, radii, size)
    else:
        heads = np.flatnonzero(rank == 0)
        pixels = _shared_circles(circle_pixels(pts[heads], radii[heads], size), heads,
                                 pts, radii, members, rank, leader, point_pixel)  # fmt: skip
    own = pixels.flat.numpy() == point_pixel[pixels.point.numpy()]
    return HeadCircles(pts, radii, pixels, point_pixel, own)


def _shared_circles(
    base: CirclePixels,
    heads: np.ndarray,
    pts: np.ndarray,
    radii: np.ndarray,
    members: np.ndarray,
    rank: np.ndarray,
    leader: np.ndarray,
    point_pixel: np.ndarray,
) -> CirclePixels:
    """The circle pixels of every head from those of the group leaders (``base``, whose point
    ``j`` is head ``heads[j]``): a head alone in its pixel keeps its circle; a leader's circle,
    its point pixel left out, is cut by angle into one run per member (module docstring)."""
    n = len(pts)
    x, y, flat, dist2 = base.x.numpy(), base.y.numpy(), base.flat.numpy(), base.dist2.numpy()
    starts = base.offsets.numpy()
    lengths = np.diff(starts)
    grouped_leaders = np.flatnonzero(members[heads] > 1)
    shared = _ranges(starts[grouped_leaders], lengths[grouped_leaders])
    group = np.repeat(heads[grouped_leaders], lengths[grouped_leaders])
    mine = flat[shared] == point_pixel[group]
    dx = x[shared] + 0.5 - pts[group, 0].astype(np.float64)
    dy = y[shared] + 0.5 - pts[group, 1].astype(np.float64)
    order = np.lexsort((np.arctan2(dy, dx), group))  # stable: angle ties stay row-major
    order = order[~mine[order]]
    grouped = group[order]
    run = _within_blocks(grouped) * members[grouped] // np.bincount(grouped, minlength=n)[grouped]
    by_group = np.lexsort((rank, leader))
    place = np.empty(n, dtype=np.int64)
    place[by_group] = np.arange(n)
    entries = np.concatenate([shared[mine], shared[order]])
    point = np.concatenate([group[mine], by_group[place[grouped] + run]])
    half = np.float32(0.5)
    ddx = x[entries].astype(np.float32) + half - pts[point, 0]
    ddy = y[entries].astype(np.float32) + half - pts[point, 1]
    near = ddx * ddx + ddy * ddy
    inside = near <= radii[point] * radii[point]
    entries, point, near = entries[inside], point[inside], near[inside]
    ordered = np.lexsort((flat[entries], point))
    entries, point, near = entries[ordered], point[ordered], near[ordered]
    # every head's block, in head order: a lone head's copied from ``base``, then the blocks
    # of the shared groups' members (``point`` is sorted) written over their places
    block_start, block_length = np.zeros(n, np.int64), np.bincount(point, minlength=n)
    alone = np.flatnonzero(members[heads] == 1)
    block_start[heads[alone]], block_length[heads[alone]] = starts[alone], lengths[alone]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(block_length, out=offsets[1:])
    source = _ranges(block_start, block_length)
    in_groups = np.flatnonzero(members > 1)
    patch = _ranges(offsets[in_groups], block_length[in_groups])
    owner = np.repeat(np.arange(n), block_length)
    arrays = [owner, x[source], y[source], flat[source], dist2[source]]
    for out, values in zip(arrays[1:], (x[entries], y[entries], flat[entries], near), strict=True):
        out[patch] = values
    tensors = [torch.from_numpy(a) for a in (*arrays, offsets)]
    return CirclePixels(*tensors, base.size)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``starts[k] … starts[k] + lengths[k] − 1`` for every ``k``, laid end to end."""
    run, position = raster.ragged_arange(lengths)
    return starts[run] + position


def _within_blocks(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (keys sorted)."""
    return np.arange(len(sorted_keys)) - np.searchsorted(sorted_keys, sorted_keys, side="left")


def disc_keep(circles: HeadCircles, fraction: float) -> np.ndarray:
    """``P bool``: circle pixels within ``fraction·r_i`` of their head (a disc fallback)."""
    pixels = circles.pixels
    limit = (fraction * torch.from_numpy(circles.radii))[pixels.point]
    return (pixels.dist2 <= limit * limit).numpy()
