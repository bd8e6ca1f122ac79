"""Compiled loops (numba) of the label maps: rasterising circles, resolving overlaps by lowest
cost and keeping each head's mask one region (union-find over the map, instead of two labelling
passes of scikit-image and SciPy).

Each is the compiled twin of a NumPy pass that gives the same bits (:mod:`xmask.geometry.raster`,
:func:`xmask.geometry.labels.connected_masks`); those callers choose between them with
:func:`xmask.geometry.kernels.ready`, and :func:`xmask.geometry.kernels.warm_up` compiles these
with the others. The public functions take what the NumPy passes take and convert it to the
one set of types the loops are compiled for (``lowest_cost_labels``, the loop itself, takes
them as they are).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _row_run(px: float, r: float, r2: float, dy2: float, low: int, high: int) -> tuple[int, int]:
    """``[start, stop)``: the pixels of ``[low, high)`` whose centres lie within ``r`` of a
    point at column ``px`` on a row ``dy2`` away (``float32`` test), from the ``sqrt``
    estimate widened by ``1 + ⌈r / 1024⌉`` and moved inward until the exact test holds."""
    half = np.sqrt(max(np.float64(r2) - np.float64(dy2), 0.0))
    pad = 1 + np.int64(np.ceil(r / np.float32(1024.0)))
    start = min(max(np.int64(np.ceil(px - 0.5 - half)) - pad, low), high)
    stop = min(max(np.int64(np.floor(px - 0.5 + half)) + 1 + pad, start), high)
    while start < stop:
        dx = np.float32(start) + np.float32(0.5) - px
        if dx * dx + dy2 <= r2:
            break
        start += 1
    while stop > start:
        dx = np.float32(stop - 1) + np.float32(0.5) - px
        if dx * dx + dy2 <= r2:
            break
        stop -= 1
    return start, stop


@njit(cache=True)
def _circle_rows(
    points: np.ndarray, radii: np.ndarray, height: int, width: int, i: int
) -> tuple[int, int, int, int]:
    """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of point ``i``'s box (the twin's ``_span``)."""
    px, py, r = points[i, 0], points[i, 1], radii[i]
    x0 = max(np.int64(np.ceil(px - r - np.float32(0.5))), 0)
    x1 = max(min(np.int64(np.floor(px + r - np.float32(0.5))), width - 1) + 1, x0)
    y0 = max(np.int64(np.ceil(py - r - np.float32(0.5))), 0)
    y1 = max(min(np.int64(np.floor(py + r - np.float32(0.5))), height - 1) + 1, y0)
    return x0, x1, y0, y1


@njit(cache=True)
def _circle_table_loop(
    points: np.ndarray, radii: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, ...]:
    """Compiled :func:`xmask.geometry.raster.circle_table`: one pass to count each circle's
    pixels, one to write them."""
    n = points.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        x0, x1, y0, y1 = _circle_rows(points, radii, height, width, i)
        r2 = radii[i] * radii[i]
        total = 0
        for y in range(y0, y1):
            dy = np.float32(y) + np.float32(0.5) - points[i, 1]
            start, stop = _row_run(points[i, 0], radii[i], r2, dy * dy, x0, x1)
            total += stop - start
        offsets[i + 1] = offsets[i] + total
    size = offsets[n]
    owner, xs, ys = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
    flat, dist2 = np.empty(size, np.int64), np.empty(size, np.float32)
    j = 0
    for i in range(n):
        x0, x1, y0, y1 = _circle_rows(points, radii, height, width, i)
        px, r2 = points[i, 0], radii[i] * radii[i]
        for y in range(y0, y1):
            dy = np.float32(y) + np.float32(0.5) - points[i, 1]
            dy2 = dy * dy
            start, stop = _row_run(px, radii[i], r2, dy2, x0, x1)
            for x in range(start, stop):
                dx = np.float32(x) + np.float32(0.5) - px
                owner[j], xs[j], ys[j], flat[j], dist2[j] = i, x, y, y * width + x, dx * dx + dy2
                j += 1
    return offsets, owner, xs, ys, flat, dist2


@njit(cache=True)
def lowest_cost_labels(
    flat: np.ndarray,
    owner: np.ndarray,
    cost: np.ndarray,
    allowed: np.ndarray,
    n_pixels: int,
    n_owners: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Compiled :func:`xmask.geometry.raster.lowest_cost_labels` (for ``int64`` ``flat`` and
    ``owner``, ``float32`` ``cost``, ``bool`` ``allowed``): a scan that keeps, per pixel, the
    lowest cost (``−0`` equal to ``+0``) and, among equal costs, the lowest owner."""
    best = np.empty(n_pixels, np.float32)
    labels = np.zeros(n_pixels, np.int32)
    for j in range(flat.shape[0]):
        if not allowed[j]:
            continue
        f, c, label = flat[j], cost[j], np.int32(owner[j] + 1)
        if f < 0 or f >= n_pixels or label < 1 or label > n_owners:
            raise ValueError("an entry's pixel or owner is out of range")
        if labels[f] == 0 or c < best[f] or (c == best[f] and label < labels[f]):
            best[f], labels[f] = c, label
    area = np.zeros(n_owners + 1, np.int64)
    for f in range(n_pixels):
        area[labels[f]] += 1
    return labels, area[1:]


@njit(cache=True)
def _root(parent: np.ndarray, i: int) -> int:
    """Union-find root of ``i`` (the lowest index of its set), compressing the path."""
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


@njit(cache=True)
def _regions(values: np.ndarray, foreground: bool) -> tuple[np.ndarray, int]:
    """4-connected regions of equal value among the pixels with ``values != 0`` (or
    ``== 0`` when not ``foreground``), numbered from 1 in raster order of their first
    pixel; 0 elsewhere. Returns ``(H×W int64 regions, count)``."""
    h, w = values.shape
    flat = values.ravel()
    parent = np.zeros(h * w, np.int64)
    for i in range(h * w):
        v = flat[i]
        if (v != 0) != foreground:
            continue
        left = i % w > 0 and flat[i - 1] == v
        up = i >= w and flat[i - w] == v
        if left:
            parent[i] = root = _root(parent, i - 1)
            if up:
                other = _root(parent, i - w)
                parent[max(root, other)] = min(root, other)
        else:
            parent[i] = _root(parent, i - w) if up else i
    regions = np.zeros(h * w, np.int64)
    count = 0
    for i in range(h * w):
        if (flat[i] != 0) != foreground:
            continue
        root = _root(parent, i)
        if root == i:
            count += 1
            regions[i] = count
        else:
            regions[i] = regions[root]
    return regions.reshape(h, w), count


@njit(cache=True)
def _connected_loop(labels: np.ndarray, cells: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Compiled :func:`xmask.geometry.labels.connected_masks` (``cells``: ``N×2 int64``
    ``(column, row)`` point pixels): each head keeps the piece at its point pixel, else its
    largest (ties to the last in raster order); then background regions off the border that
    touch one head only go to it."""
    h, w = labels.shape
    out = labels.copy()
    pieces, count = _regions(out, True)
    sizes, owner = np.zeros(count + 1, np.int64), np.zeros(count + 1, np.int64)
    for y in range(h):
        for x in range(w):
            if out[y, x] < 0 or out[y, x] > n:
                raise ValueError("a label is not 0 (background) or a head's number 1..N")
            sizes[pieces[y, x]] += 1
            owner[pieces[y, x]] = out[y, x]
    keep = np.zeros(n + 1, np.int64)
    for piece in range(1, count + 1):
        head = owner[piece]
        if keep[head] == 0 or sizes[piece] >= sizes[keep[head]]:
            keep[head] = piece
    for k in range(n):
        x, y = cells[k, 0], cells[k, 1]
        if out[y, x] == k + 1:
            keep[k + 1] = pieces[y, x]
    for y in range(h):
        for x in range(w):
            if out[y, x] > 0 and pieces[y, x] != keep[out[y, x]]:
                out[y, x] = 0
    holes, count = _regions(out, False)
    neighbour = np.zeros(count + 1, np.int64)  # the one head touching a hole; −1: several
    for y in range(h):
        for x in range(w):
            hole = holes[y, x]
            if hole == 0:
                continue
            if y == 0 or x == 0 or y == h - 1 or x == w - 1:
                neighbour[hole] = -1
            for ny, nx in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x)):
                if 0 <= ny < h and 0 <= nx < w and out[ny, nx] > 0 and neighbour[hole] >= 0:
                    if neighbour[hole] == 0:
                        neighbour[hole] = out[ny, nx]
                    elif neighbour[hole] != out[ny, nx]:
                        neighbour[hole] = -1
    area = np.zeros(n + 1, np.int64)
    for y in range(h):
        for x in range(w):
            if holes[y, x] > 0 and neighbour[holes[y, x]] > 0:
                out[y, x] = neighbour[holes[y, x]]
            area[out[y, x]] += 1
    return out, area[1:]


def circle_table(
    points: np.ndarray, radii: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, ...]:
    """The compiled :func:`xmask.geometry.raster.circle_table` (same arguments and result)."""
    pts = np.ascontiguousarray(points, np.float32).reshape(-1, 2)
    return _circle_table_loop(pts, np.ascontiguousarray(radii, np.float32), height, width)


def connected_masks(labels: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The compiled :func:`xmask.geometry.labels.connected_masks`, given the heads' point
    pixels (``N×2 int64`` ``(column, row)``) instead of their points."""
    cells = np.ascontiguousarray(cells, np.int64).reshape(-1, 2)
    return _connected_loop(np.ascontiguousarray(labels, np.int32), cells, len(cells))
