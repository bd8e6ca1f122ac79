"""Per-head candidate masks → one instance label map: what annotation and segmentation share.

A backend (superpixels, EDP-SAM, FastSAM baselines, or the embedding of Eq. 11) only decides, for
each pixel of each head's NNEC circle, whether that pixel belongs to the head's *candidate* mask.
This module owns everything else, so every backend and the instance segmentation obey the same
rules:

Circles (paper Eq. 1, 7)
    Each head's candidate mask lives inside its NNEC circle ``C_i``
    (:func:`xmask.geometry.circles.head_circles`: ``r_i`` floored at
    :data:`~xmask.geometry.circles.R_MIN`, exact duplicates measured to the nearest point at a
    different position, so every copy gets the full circle of its head).

Co-located heads (flag ``shared``)
    ``k >= 2`` points in one pixel (exact duplicates, or two clicks closer than a pixel) split
    one circle: :func:`xmask.geometry.circles.circles_of` gives the first of them (the lowest
    index) the point pixel and the first of ``k`` angular runs of its circle, and each other
    member of rank ``m`` only run ``m``, so their memory does not grow with ``k``. Every
    member of rank ``m >= 1`` is also *seeded* with the nearest pixel of its run that holds no
    point (cost −0.5: it loses only to point pixels), so each of them gets a non-empty mask
    wherever its run has such a pixel (a circle of ``r >= 3`` has 28 or more pixels).

Candidate masks
    ``keep``: a ``P`` bool over the flat circle-pixel list (``P = Σ |C_i|``); entry ``j``
    says whether pixel ``(pixels.y[j], pixels.x[j])`` is in the candidate mask of head
    ``pixels.point[j]``. A backend whose masks live elsewhere (a SAM low-res mask per head, a
    superpixel map) samples them at the circle pixels: each head's entries are the slice
    ``offsets[i]:offsets[i+1]``, i.e. exactly its local window. Clipping to ``C_i`` is
    therefore automatic: nothing outside a circle can ever be labelled.

Point pixel (forced)
    The pixel containing ``p_i`` (:func:`xmask.geometry.points.pixel_of`) is always in head ``i``'s
    candidate, and it wins that pixel against every other head (cost −1). So every head whose
    point pixel holds no other point gets a non-empty mask containing its own point pixel
    (flag ``forced`` when the backend had left it out). Needs ``min(H, W) >= 2`` (so that
    ``r_i >= 1`` puts the point pixel's centre inside ``C_i``).

Connected masks (:func:`connected_masks`)
    A label map may leave a head in several pieces (speckles of the head's colour far from it)
    or with holes. Each head keeps the 4-connected piece that holds its point pixel (its
    largest piece when another head owns that pixel, a co-located member); its other pieces go
    back to the background; a background region enclosed by one head alone (not touching the
    image border) becomes that head's. One pass over the ``H×W`` map: no cost per head.

Overlap rule
    A pixel kept by several heads goes to the one of lowest *normalised* distance
    ``||pixel centre − p_i|| / r_i`` (ties to the lowest index, via
    :func:`xmask.geometry.circles.label_map`): a big head is not eaten by the circle of a small
    neighbour. Point pixels are decided first as above; if two points share a pixel, the
    lower index owns it. A caller may pass its own cost instead (instance segmentation passes
    the energy of Eq. 11, :mod:`xmask.segment.instances`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected_regions

from xmask.geometry import kernels, label_kernels, raster
from xmask.geometry.circles import HeadCircles, pixel_groups
from xmask.geometry.points import pixel_of


@dataclass
class MaskResult:
    """One image's annotation.

    Attributes:
        labels: ``H×W int32`` instance label map, 0 background, ``k`` = ``points[k − 1]``.
        radii: ``N float32`` NNEC radii used to clip each mask.
        area: ``N int64`` pixels of each final mask.
        fallback: ``N bool``, the backend used its fallback mask (e.g. a disc) for the head.
        forced: ``N bool``, the backend had left out the head's point pixel (or, for a
            co-located head of rank >= 1, its seed pixel) and it was forced in.
        shared: ``N bool``, another point lies in the same pixel (the heads split their
            circles, see the module docstring).
    """

    labels: np.ndarray
    radii: np.ndarray
    area: np.ndarray
    fallback: np.ndarray
    forced: np.ndarray
    shared: np.ndarray

    @property
    def empty(self) -> int:
        """Number of heads with an empty mask."""
        return int((self.area == 0).sum())


def resolve_labels(
    circles: HeadCircles,
    keep: np.ndarray,
    fallback: np.ndarray | None = None,
    cost: torch.Tensor | None = None,
) -> MaskResult:
    """Final label map from per-head candidate masks (rules in the module docstring).

    Args:
        circles: from :func:`head_circles`.
        keep: ``P bool`` over ``circles.pixels``: the candidate mask of each head.
        fallback: ``N bool``, which heads the backend filled with its fallback (reported only).
        cost: ``P float >= 0`` (CPU), what decides overlaps (lower wins) instead of the
            normalised distance ``d²/r²`` (the segmentation energy of Eq. 11, for instance).

    Returns:
        :class:`MaskResult`; memory ``O(H·W + P)``.
    """
    n = len(circles)
    pixels = circles.pixels
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(pixels),):
        raise ValueError(f"keep must be a bool vector of {len(pixels)} circle pixels")
    split = split_colocated(circles)
    if cost is not None and cost.shape != (len(pixels),):
        raise ValueError(f"cost must have one value per circle pixel ({len(pixels)})")
    if cost is None:
        radius = torch.from_numpy(circles.radii)[pixels.point]
        cost = pixels.dist2 / (radius * radius)
    point = pixels.point.numpy()
    costs, allowed = raster.forced_costs(
        cost.numpy().astype(np.float32, copy=False), keep, circles.own, split.seed, split.allowed
    )
    labels, area = raster.lowest_cost_labels(
        pixels.flat.numpy(), point, costs, allowed, pixels.size[0] * pixels.size[1], n
    )
    forced = np.zeros(n, dtype=bool)
    forced[point[(circles.own | split.seed) & ~keep]] = True
    return MaskResult(
        labels=labels.reshape(pixels.size),
        radii=circles.radii,
        area=area,
        fallback=np.zeros(n, dtype=bool) if fallback is None else np.asarray(fallback, bool),
        forced=forced,
        shared=split.shared,
    )


@dataclass
class ColocatedSplit:
    """How heads whose points share a pixel split their circles (module docstring).

    Attributes:
        shared: ``N bool``, the head's point pixel holds another point too.
        allowed: ``P bool`` over the circle pixels, entries the head may keep (all True for a
            head alone in its pixel).
        seed: ``P bool``, the one entry forced into each co-located head of rank >= 1.
    """

    shared: np.ndarray
    allowed: np.ndarray
    seed: np.ndarray


def split_colocated(circles: HeadCircles) -> ColocatedSplit:
    """Seed pixels of co-located heads, whose circles
    (:func:`xmask.geometry.circles.circles_of`) already hold only their own angular run;
    ``O(P)`` memory, no loop over heads."""
    pixels = circles.pixels
    members, rank, _ = pixel_groups(circles.point_pixel)
    shared = members > 1
    allowed, seed = np.ones(len(pixels), dtype=bool), np.zeros(len(pixels), dtype=bool)
    if not shared.any():
        return ColocatedSplit(shared, allowed, seed)
    point, flat = pixels.point.numpy(), pixels.flat.numpy()
    candidates = np.flatnonzero((rank[point] >= 1) & ~np.isin(flat, circles.point_pixel))
    nearest = candidates[np.lexsort((pixels.dist2.numpy()[candidates], point[candidates]))]
    _, first = np.unique(point[nearest], return_index=True)
    seed[nearest[first]] = True
    return ColocatedSplit(shared, allowed, seed)


def connected_masks(
    labels: np.ndarray, points: np.ndarray, heads: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every head's mask as one 4-connected region holding its point, holes filled (module
    docstring, "Connected masks").

    Args:
        labels: ``H×W`` int label map, 0 background, ``k`` = ``points[k − 1]``.
        points: ``N×2`` ``(x, y)`` pixels inside the image.
        heads: the indices of the only heads that may break the rule, when the caller knows
            them (every other head one region holding its point pixel, with no background
            region enclosed by it alone): only their pieces are dropped, and the compiled
            loop fills holes only of these and of the heads next to a pixel they give up; the
            result is the same as with None. ``labels`` may then be a crop of the image that
            holds the boxes of all those heads (:mod:`xmask.segment.grid` mends in one).

    Returns:
        ``(H×W int32 labels, N int64 areas)``; ``labels`` is not modified.
    """
    n = len(points)
    if n == 0 or not np.any(labels):
        return np.asarray(labels, dtype=np.int32).copy(), np.zeros(n, dtype=np.int64)
    cell = pixel_of(np.asarray(points, dtype=np.float32).reshape(-1, 2), np.shape(labels))
    if kernels.ready("connected_masks"):
        return label_kernels.connected_masks(labels, cell, heads)
    out = np.asarray(labels, dtype=np.int32).copy()
    pieces = connected_regions(out, background=0, connectivity=1)
    keep = np.zeros(n + 1, dtype=np.int64)
    owner = np.bincount(pieces.ravel(), weights=out.ravel(), minlength=pieces.max() + 1)
    sizes = np.bincount(pieces.ravel(), minlength=pieces.max() + 1)
    owner = np.rint(owner / np.maximum(sizes, 1)).astype(np.int64)  # a piece has one label
    order = np.lexsort((sizes[1:], owner[1:])) + 1  # by head, then size: the largest last
    keep[owner[order]] = order
    at_point = pieces[cell[:, 1], cell[:, 0]]
    holds = out[cell[:, 1], cell[:, 0]] == np.arange(1, n + 1)
    keep[np.flatnonzero(holds) + 1] = at_point[holds]
    drop = (out > 0) & (pieces != keep[out])
    if heads is not None:  # as the compiled loop: only these heads' pieces are looked at
        todo = np.zeros(n + 1, dtype=bool)
        todo[np.asarray(heads, dtype=np.int64) + 1] = True
        drop &= todo[out]
    out[drop] = 0
    _fill_holes(out)
    return out, np.bincount(out.ravel(), minlength=n + 1)[1:].astype(np.int64)


def _fill_holes(labels: np.ndarray) -> None:
    """Give each background region enclosed by one head alone (not touching the image border)
    to that head, in place."""
    holes, count = ndimage.label(labels == 0)
    if count == 0:
        return
    stride = np.int64(labels.max()) + 1  # a (hole, head) pair as one key: hole·stride + head
    keys = []
    for a, b in (
        (holes[:, :-1], labels[:, 1:]),
        (holes[:, 1:], labels[:, :-1]),
        (holes[:-1], labels[1:]),
        (holes[1:], labels[:-1]),
    ):
        touching = (a > 0) & (b > 0)
        keys.append(a[touching].astype(np.int64) * stride + b[touching])
    found = np.unique(np.concatenate(keys))
    hole_of, head_of = found // stride, found % stride
    neighbours = np.bincount(hole_of, minlength=count + 1)
    head = np.zeros(count + 1, dtype=np.int64)
    head[hole_of] = head_of
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    enclosed = neighbours == 1
    enclosed[border] = False
    enclosed[0] = False
    fill = enclosed[holes]
    labels[fill] = head[holes[fill]]
