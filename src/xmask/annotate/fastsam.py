"""FastSAM baselines of the paper's Tab. 1: point prompts answered from FastSAM's candidate masks.

FastSAM (ultralytics ``FastSAM``: a YOLOv8-seg network, FastSAM-s = YOLOv8s-seg, FastSAM-x =
YOLOv8x-seg, one class) segments *everything*: ``K`` candidate masks per image (``K <= max_det``,
not the number of heads), at image resolution with ``retina_masks``. Each head point is then
answered from those candidates (paper Sec. 4.1):

``fastsam`` ("FastSAM", no NNEC)
    Each point takes the **smallest candidate mask covering its point pixel** (pixel of
    :func:`xmask.geometry.points.pixel_of`; ties of area go to the lower candidate index, i.e. the
    higher FastSAM confidence). Masks are *not* clipped to circles, so the chosen candidates
    overlap; the label map gives each pixel to one head by the rule **smallest area wins**:
    a pixel covered by several chosen candidates goes to the smallest of them, and a candidate
    chosen by several heads is split between those heads by the nearest point (Voronoi inside
    the candidate). The point pixel of every head that has a candidate is then given to it
    (lowest index first where two points share a pixel; flag ``forced`` where that changed
    the pixel's owner, which only equal areas or a nearer point of the same candidate can
    cause). Exact duplicate points: the lowest index takes the split, later copies end up
    empty (flag ``shared``; with no circle there is nothing to split between them, unlike
    :mod:`xmask.geometry.labels`). A point that no candidate
    covers gets **no mask** (FastSAM alone has no fallback).
``fastsam-nnec`` ("FastSAM + NNEC")
    The same choice, intersected with the head's NNEC circle ``C_i`` (Eq. 1); a point that no
    candidate covers gets "an NNEC-generated circular proxy" (paper): the disc of
    ``fallback_radius·r_i``, by default the full circle (flag ``fallback``). Circle, overlap,
    duplicate, co-located and point-pixel rules are those of :mod:`xmask.geometry.labels`; no
    pixel lies outside its circle.

Memory
    The ``K×H×W uint8`` candidate stack is what ultralytics returns; the matching never makes a
    heads × H × W array nor a copy of the stack (a ``uint8`` stack is read as ``bool`` in
    place): areas are summed over chunks of ``chunk`` candidates, and the owner map of the
    ``fastsam`` baseline is painted one chosen candidate at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree

from xmask.annotate.fastsam_model import FastSamConfig, candidate_masks, check_image, load_fastsam
from xmask.geometry.circles import (
    check_points,
    circle_options,
    disc_keep,
    head_circles,
    nnec_radii,
)
from xmask.geometry.labels import MaskResult, resolve_labels
from xmask.geometry.points import pixel_of

if TYPE_CHECKING:
    from ultralytics.models.fastsam import FastSAMPredictor

log = logging.getLogger(__name__)


def _as_bool(masks: torch.Tensor) -> torch.Tensor:
    """``K×H×W bool`` masks; a ``uint8`` 0/1 stack (ultralytics') is reinterpreted, not copied."""
    if masks.ndim != 3:
        raise ValueError(f"candidate masks must be K×H×W, got shape {tuple(masks.shape)}")
    if masks.dtype == torch.bool:
        return masks
    if masks.dtype == torch.uint8:
        return masks.view(torch.bool)
    raise ValueError(f"candidate masks must be bool or 0/1 uint8, got {masks.dtype}")


def smallest_covering(
    masks: torch.Tensor, points: np.ndarray, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """For every point, the smallest candidate mask covering its point pixel.

    Args:
        masks: ``K×H×W`` bool or 0/1 uint8 candidate masks (any device).
        points: ``N×2`` ``(x, y)`` pixels inside ``[0, W] × [0, H]`` (a point on the right or
            bottom border lies in the last column or row).
        chunk: candidates whose area is summed at once.

    Returns:
        ``(choice, area)``: ``N int64`` candidate index per point, ``-1`` where no candidate
        covers the point (ties of area: the lower index); ``K int64`` candidate areas in pixels.
    """
    masks = _as_bool(masks)
    k, h, w = masks.shape
    n = len(points)
    area = np.zeros(k, dtype=np.int64)
    if k == 0 or n == 0:
        return np.full(n, -1, dtype=np.int64), area
    row_sum = torch.int16 if w < 2**15 else torch.int32  # row sums first: 4× faster than int32
    for start in range(0, k, chunk):
        rows = masks[start : start + chunk].sum(2, dtype=row_sum)
        area[start : start + chunk] = rows.sum(1, dtype=torch.int64).cpu().numpy()
    cell = torch.from_numpy(pixel_of(points, (h, w))).to(masks.device)
    covers = masks[:, cell[:, 1], cell[:, 0]].cpu().numpy()  # K×N
    cost = np.where(covers, area[:, None], np.iinfo(np.int64).max)
    choice = cost.argmin(axis=0)
    return np.where(covers.any(axis=0), choice, -1).astype(np.int64), area


def _smallest_owner(masks: torch.Tensor, order: np.ndarray) -> np.ndarray:
    """``H×W int64``: per pixel, the first position in ``order`` whose candidate covers it
    (``order`` by ascending area: the smallest), ``-1`` where none does."""
    owner = torch.full(masks.shape[1:], -1, dtype=torch.int64, device=masks.device)
    for rank in range(len(order) - 1, -1, -1):  # the largest first: smaller ones overwrite it
        owner.masked_fill_(masks[int(order[rank])], rank)
    return owner.cpu().numpy()


def _plain_labels(
    masks: torch.Tensor, pts: np.ndarray, choice: np.ndarray, area: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label map of the ``fastsam`` baseline (smallest area wins; module docstring).

    Returns:
        ``(H×W int32 labels, N bool forced)``.
    """
    h, w = masks.shape[1:]
    n = len(pts)
    has = choice >= 0
    if not has.any():
        return np.zeros((h, w), dtype=np.int32), np.zeros(n, dtype=bool)
    chosen = np.unique(choice[has])
    order = chosen[np.lexsort((chosen, area[chosen]))]  # ascending area, ties: lower index
    rank_of = np.full(len(area), -1, dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    head_rank = np.where(has, rank_of[np.maximum(choice, 0)], -1)
    owner = _smallest_owner(masks, order).ravel()
    sharers = np.bincount(head_rank[has], minlength=len(order))
    single = np.zeros(len(order), dtype=np.int64)
    single[head_rank[has]] = np.flatnonzero(has) + 1  # the head of a rank chosen once
    labels = np.where(owner >= 0, single[np.maximum(owner, 0)], 0)
    split = np.flatnonzero((owner >= 0) & (sharers[np.maximum(owner, 0)] > 1))
    if len(split):
        # nearest head among those sharing the candidate: the rank as a third coordinate,
        # spaced further apart than any two pixels of the image
        gap = 2.0 * (h + w)
        heads = np.flatnonzero(has & (sharers[np.maximum(head_rank, 0)] > 1))
        coords = np.column_stack([pts[heads].astype(np.float64), head_rank[heads] * gap])
        _, first = np.unique(coords, axis=0, return_index=True)  # copies: the lowest index
        heads, tree = heads[first], cKDTree(coords[first])
        query = np.column_stack(
            [split % w + 0.5, split // w + 0.5, owner[split].astype(np.float64) * gap]
        )
        labels[split] = heads[tree.query(query)[1]] + 1
    cell = pixel_of(pts, (h, w))
    point_pixel = cell[:, 1] * w + cell[:, 0]
    before = labels[point_pixel].copy()
    heads = np.flatnonzero(has)
    pixel, first = np.unique(point_pixel[heads], return_index=True)  # lowest index per pixel
    labels[pixel] = heads[first] + 1
    after = labels[point_pixel]
    forced = has & (before != np.arange(1, n + 1)) & (after == np.arange(1, n + 1))
    return labels.reshape(h, w).astype(np.int32), forced


def fastsam_labels(
    masks: torch.Tensor, points: np.ndarray, cfg: FastSamConfig, nnec: bool
) -> MaskResult:
    """One mask per head from FastSAM candidates (the two baselines; module docstring).

    Args:
        masks: ``K×H×W`` bool or 0/1 uint8 candidate masks at image resolution.
        points: ``N×2 float32`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
        cfg: ``r_min``, ``duplicates``, ``fallback_radius``, ``chunk``.
        nnec: ``fastsam-nnec`` (clip to the NNEC circle, circle fallback) or ``fastsam``.

    Returns:
        :class:`~xmask.geometry.labels.MaskResult`, ``H×W int32`` labels (0 background, ``k`` =
        ``points[k − 1]``); ``fallback`` marks heads no candidate covers (``fastsam-nnec``:
        given the disc; ``fastsam``: left empty).

    Raises:
        ValueError: points not finite or outside the image.
    """
    masks = _as_bool(masks)
    size = tuple(masks.shape[1:])
    pts = check_points(points, size)
    choice, area = smallest_covering(masks, pts, cfg.chunk)
    missing = choice < 0
    if nnec:
        circles = head_circles(pts, size, **circle_options(cfg))
        pixels = circles.pixels
        cand = torch.from_numpy(choice)[pixels.point]
        keep = torch.zeros(len(pixels), dtype=torch.bool)
        hit = cand >= 0
        if hit.any():
            device = masks.device
            sample = masks[cand[hit].to(device), pixels.y[hit].to(device), pixels.x[hit].to(device)]
            keep[hit] = sample.cpu()
        keep_np = keep.numpy()
        if missing.any():
            disc = disc_keep(circles, cfg.fallback_radius)
            keep_np = np.where(missing[pixels.point.numpy()], disc, keep_np)
        return resolve_labels(circles, keep_np, fallback=missing)
    labels, forced = _plain_labels(masks, pts, choice, area)
    cell = pixel_of(pts, size)
    _, inverse, counts = np.unique(
        cell[:, 1] * size[1] + cell[:, 0], return_inverse=True, return_counts=True
    )
    n = len(pts)
    return MaskResult(
        labels=labels,
        radii=nnec_radii(pts, size, **circle_options(cfg)),
        area=np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64),
        fallback=missing,
        forced=forced,
        shared=counts[inverse.ravel()] > 1,
    )


def annotate_fastsam(
    image: np.ndarray,
    points: np.ndarray,
    model: FastSAMPredictor,
    cfg: FastSamConfig,
    nnec: bool,
) -> MaskResult:
    """The ``fastsam`` (``nnec=False``) or ``fastsam-nnec`` baseline on one image.

    Args:
        image: ``H×W×3 uint8`` RGB.
        points: ``N×2 float32`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
        model: from :func:`load_fastsam`.
        cfg: prediction and matching settings.
        nnec: clip to the NNEC circles with the circle fallback.

    Returns:
        :class:`~xmask.geometry.labels.MaskResult` (see :func:`fastsam_labels`).

    Raises:
        ValueError: a bad image, or points not finite or outside the image.
    """
    check_image(image)
    check_points(points, image.shape[:2])
    start = time.perf_counter()
    masks = candidate_masks(model, image, cfg)
    middle = time.perf_counter()
    result = fastsam_labels(masks, points, cfg, nnec)
    log.debug(
        "FastSAM%s: %d candidates, %d heads, %d without a candidate; network %.3f s, "
        "matching %.3f s",
        " + NNEC" if nnec else "",
        len(masks),
        len(points),
        int(result.fallback.sum()),
        middle - start,
        time.perf_counter() - middle,
    )
    return result


def fastsam_backend(
    cfg: FastSamConfig | None = None, nnec: bool = True
) -> Callable[[np.ndarray, np.ndarray], MaskResult]:
    """An annotation backend ``(image H×W×3 uint8, points N×2 (x, y)) → MaskResult`` running
    the ``fastsam-nnec`` (``nnec``) or ``fastsam`` baseline; the network is loaded once, here."""
    cfg = cfg or FastSamConfig()
    model = load_fastsam(cfg)

    def run(image: np.ndarray, points: np.ndarray) -> MaskResult:
        return annotate_fastsam(image, points, model, cfg, nnec)

    return run
