"""Compiled loops (numba) of the label maps: rasterising circles, resolving overlaps by lowest
cost and keeping each head's mask one region (flood fills inside each head's box, instead of
two labelling passes of scikit-image and SciPy over the whole map).

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
def _flood(
    out: np.ndarray,
    start: int,
    value: int,
    box: np.ndarray,
    seen: np.ndarray,
    stamp: int,
    pixels: np.ndarray,
) -> tuple[int, bool]:
    """4-connected pixels of ``value`` from ``start`` inside ``box = (y0, y1, x0, x1)`` (half
    open), stamped in ``seen`` and listed in ``pixels``. Returns ``(count, edge)``: how many,
    and whether one lies on the box's edge."""
    w = out.shape[1]
    y0, y1, x0, x1 = box[0], box[1], box[2], box[3]
    flat, marks = out.ravel(), seen.ravel()
    marks[start] = stamp
    pixels[0] = start
    count, head, edge = 1, 0, False
    while head < count:
        i = pixels[head]
        head += 1
        y, x = i // w, i % w
        edge = edge or y == y0 or y == y1 - 1 or x == x0 or x == x1 - 1
        for j, inside in (
            (i - 1, x > x0),
            (i + 1, x < x1 - 1),
            (i - w, y > y0),
            (i + w, y < y1 - 1),
        ):
            if inside and marks[j] != stamp and flat[j] == value:
                marks[j] = stamp
                pixels[count] = j
                count += 1
    return count, edge


@njit(cache=True)
def _connected_loop(
    labels: np.ndarray, cells: np.ndarray, n: int, todo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Compiled :func:`xmask.geometry.labels.connected_masks` (``cells``: ``N×2 int64``
    ``(column, row)`` point pixels; ``todo``: ``N+1 bool``, the heads whose pieces are looked
    at): each head keeps the piece at its point pixel, else its largest (ties to the last in
    raster order); then background regions off the border that touch one head only go to it,
    for the heads in ``todo`` and those next to a pixel given up. Head by head inside the box
    of its pixels, so the work follows the masks' area, not the image's: a hole enclosed by
    one head lies inside that head's box, and a background region inside a box that does not
    reach its edge is whole."""
    h, w = labels.shape
    out = labels.copy()
    boxes = np.empty((n + 1, 4), np.int64)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = h, 0, w, 0
    for y in range(h):
        for x in range(w):
            v = out[y, x]
            if v < 0 or v > n:
                raise ValueError("a label is not 0 (background) or a head's number 1..N")
            if v > 0:
                boxes[v, 0], boxes[v, 1] = min(boxes[v, 0], y), max(boxes[v, 1], y + 1)
                boxes[v, 2], boxes[v, 3] = min(boxes[v, 2], x), max(boxes[v, 3], x + 1)
    seen = np.zeros((h, w), np.int64)
    pixels = np.empty(h * w, np.int64)
    fill = todo.copy()
    stamp = 0
    for k in range(1, n + 1):  # the pieces of each head: keep one
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if y0 >= y1 or not todo[k]:
            continue
        at_point = out[cells[k - 1, 1], cells[k - 1, 0]] == k
        kept, kept_size, first = -1, -1, stamp + 1
        for y in range(y0, y1):
            for x in range(x0, x1):
                if out[y, x] != k or seen[y, x] >= first:
                    continue
                stamp += 1
                size, _ = _flood(out, y * w + x, k, boxes[k], seen, stamp, pixels)
                if not at_point and size >= kept_size:
                    kept, kept_size = stamp, size
        if at_point:
            kept = seen[cells[k - 1, 1], cells[k - 1, 0]]
        for y in range(y0, y1):
            for x in range(x0, x1):
                if out[y, x] == k and seen[y, x] != kept:
                    out[y, x] = 0
                    for v in (out[max(y - 1, 0), x], out[min(y + 1, h - 1), x]):
                        fill[v] = True
                    for v in (out[y, max(x - 1, 0)], out[y, min(x + 1, w - 1)]):
                        fill[v] = True
    for k in range(1, n + 1):  # the holes inside each head's box
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if not fill[k]:
            continue
        first = stamp + 1
        for y in range(y0, y1):
            for x in range(x0, x1):
                if out[y, x] != 0 or seen[y, x] >= first:
                    continue
                stamp += 1
                size, edge = _flood(out, y * w + x, 0, boxes[k], seen, stamp, pixels)
                if edge or not _only_neighbour(out, pixels, size, k):
                    continue
                flat = out.ravel()
                for q in range(size):
                    flat[pixels[q]] = k
    area = np.zeros(n + 1, np.int64)
    for y in range(h):
        for x in range(w):
            area[out[y, x]] += 1
    return out, area[1:]


@njit(cache=True)
def _only_neighbour(out: np.ndarray, pixels: np.ndarray, size: int, k: int) -> bool:
    """Whether every labelled 4-neighbour of the region ``pixels[:size]`` (off the image's
    edge: the caller's box keeps it inside) is head ``k``."""
    w = out.shape[1]
    flat = out.ravel()
    for q in range(size):
        i = pixels[q]
        for j in (i - 1, i + 1, i - w, i + w):
            if flat[j] != 0 and flat[j] != k:
                return False
    return True


def circle_table(
    points: np.ndarray, radii: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, ...]:
    """The compiled :func:`xmask.geometry.raster.circle_table` (same arguments and result)."""
    pts = np.ascontiguousarray(points, np.float32).reshape(-1, 2)
    return _circle_table_loop(pts, np.ascontiguousarray(radii, np.float32), height, width)


def connected_masks(
    labels: np.ndarray, cells: np.ndarray, heads: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The compiled :func:`xmask.geometry.labels.connected_masks`, given the heads' point
    pixels (``N×2 int64`` ``(column, row)``) instead of their points."""
    cells = np.ascontiguousarray(cells, np.int64).reshape(-1, 2)
    todo = np.zeros(len(cells) + 1, np.bool_)
    if heads is None:
        todo[1:] = True
    else:
        todo[np.asarray(heads, np.int64) + 1] = True
    return _connected_loop(np.ascontiguousarray(labels, np.int32), cells, len(cells), todo)
