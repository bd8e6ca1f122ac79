"""Compiled CPU loops (numba) behind the geometry, the smoothing and the segmentation.

Each kernel is one pass over a ragged list of circle pixels or over rows of a table, with
no temporary of that list's size: the work that vectorised tensor code spreads over a dozen
full-size intermediates (index arithmetic, gathers, masks, scatter-reduces) is done here in
one loop. They take NumPy arrays and know nothing of the method; their callers
(:mod:`xmask.geometry`, :mod:`xmask.segment`) give them meaning and are tested against
slow, literal references.

Floating point follows the tensor code exactly where results are compared bit for bit
(``float32`` distances, label decisions); sums over the embedding dimension are reordered
for SIMD (``fastmath``) and may differ in the last bits.
Compiled code is cached on disk (numba ``cache=True``), so only the first call of a fresh
install pays the compilation (about a second per kernel).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_HALF = np.float32(0.5)


def set_threads(threads: int) -> None:
    """Threads of the parallel kernels launched from the calling thread (as
    ``torch.set_num_threads`` for the network), at most numba's pool size."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True)
def _span(centre: np.float32, radius: np.float32, n_pixels: int) -> tuple[int, int]:
    """First and one-past-last pixel whose centre may lie within ``radius`` along one axis."""
    first = max(int(np.ceil(centre - radius - _HALF)), 0)
    last = min(int(np.floor(centre + radius - _HALF)), n_pixels - 1)
    return first, max(last + 1, first)


@njit(cache=True, parallel=True)
def circle_counts(points: np.ndarray, radii: np.ndarray, height: int, width: int) -> np.ndarray:
    """``N int64``: pixels of each circle (see :func:`circle_fill`)."""
    n = points.shape[0]
    counts = np.zeros(n, np.int64)
    for i in prange(n):
        px, py, r = points[i, 0], points[i, 1], radii[i]
        x0, x1 = _span(px, r, width)
        y0, y1 = _span(py, r, height)
        r2 = r * r
        for y in range(y0, y1):
            dy = np.float32(y) + _HALF - py
            for x in range(x0, x1):
                dx = np.float32(x) + _HALF - px
                if dx * dx + dy * dy <= r2:
                    counts[i] += 1
    return counts


@njit(cache=True, parallel=True)
def circle_fill(
    points: np.ndarray,
    radii: np.ndarray,
    height: int,
    width: int,
    offsets: np.ndarray,
    owner: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    flat: np.ndarray,
    dist2: np.ndarray,
) -> None:
    """Fill the CSR arrays of the circles: pixel centres within ``radii[i]`` of ``points[i]``
    (``float32`` arithmetic), point by point, each circle in row-major order.

    Args:
        points: ``N×2 float32`` ``(x, y)`` pixels.
        radii: ``N float32``.
        offsets: ``N+1 int64`` from :func:`circle_counts`.
        owner, xs, ys, flat, dist2: outputs of length ``offsets[-1]``: the point, column,
            row, row-major index ``y·W + x`` (``int64``) and squared distance (``float32``).
    """
    for i in prange(points.shape[0]):
        px, py, r = points[i, 0], points[i, 1], radii[i]
        x0, x1 = _span(px, r, width)
        y0, y1 = _span(py, r, height)
        r2 = r * r
        j = offsets[i]
        for y in range(y0, y1):
            dy = np.float32(y) + _HALF - py
            for x in range(x0, x1):
                dx = np.float32(x) + _HALF - px
                d2 = dx * dx + dy * dy
                if d2 <= r2:
                    owner[j], xs[j], ys[j], flat[j], dist2[j] = i, x, y, y * width + x, d2
                    j += 1


@njit(cache=True, parallel=True)
def owner_value_equal(values: np.ndarray, owner: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``P bool``: ``values[j] == reference[owner[j]]`` (e.g. the entry is its owner's own
    pixel)."""
    out = np.empty(values.shape[0], np.bool_)
    for j in prange(values.shape[0]):
        out[j] = values[j] == reference[owner[j]]
    return out


@njit(cache=True)
def lowest_cost_labels(
    flat: np.ndarray,
    owner: np.ndarray,
    cost: np.ndarray,
    allowed: np.ndarray,
    n_pixels: int,
    n_owners: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each allowed entry's pixel goes to the owner of lowest cost (ties to the lowest owner).

    Args:
        flat: ``P int64`` pixel index of each entry.
        owner: ``P int64`` owner of each entry, in ``[0, n_owners)``.
        cost: ``P float32``.
        allowed: ``P bool``.

    Returns:
        ``(labels, area)``: ``n_pixels int32`` (``owner + 1``, 0 where no entry is allowed)
        and ``n_owners int64`` pixels won by each owner.
    """
    best = np.full(n_pixels, np.inf, np.float32)
    labels = np.zeros(n_pixels, np.int32)
    for j in range(flat.shape[0]):
        if not allowed[j]:
            continue
        f, c, label = flat[j], cost[j], owner[j] + 1
        if c < best[f] or (c == best[f] and (labels[f] == 0 or label < labels[f])):
            best[f], labels[f] = c, label
    area = np.zeros(n_owners, np.int64)
    for f in range(n_pixels):
        if labels[f] > 0:
            area[labels[f] - 1] += 1
    return labels, area


@njit(cache=True)
def forced_costs(
    cost: np.ndarray, keep: np.ndarray, own: np.ndarray, seed: np.ndarray, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Costs and permissions of the annotation rules (:func:`xmask.geometry.labels.resolve_labels`):
    an entry that is its head's own point pixel costs −1 and one that is a co-located head's
    seed −0.5, and both are always allowed; any other entry is allowed where ``keep`` and
    ``split`` (the co-located heads' angular runs) both allow it.

    Returns:
        ``(cost, allowed)``: ``P float32``, ``P bool``.
    """
    out = np.empty(cost.shape[0], np.float32)
    allowed = np.empty(cost.shape[0], np.bool_)
    for j in range(cost.shape[0]):
        if own[j]:
            out[j], allowed[j] = -1.0, True
        elif seed[j]:
            out[j], allowed[j] = -0.5, True
        else:
            out[j], allowed[j] = cost[j], keep[j] and split[j]
    return out, allowed


@njit(cache=True, parallel=True, fastmath=True)
def circle_energy(
    table: np.ndarray,
    flat: np.ndarray,
    owner: np.ndarray,
    dist2: np.ndarray,
    centres: np.ndarray,
    spread2: np.ndarray,
    lam: float,
) -> np.ndarray:
    """``P float32``: ``||table[flat[j]] − centres[owner[j]]|| + lam·dist2[j] / spread2[owner[j]]``
    (Eq. 11 with ``spread2 = (r + ε)²``).

    Args:
        table: ``(H·W)×D float32`` pixel-major embedding.
        flat, owner, dist2: the circle pixels (CSR entries).
        centres: ``N×D float32``.
        spread2: ``N float32`` squared spread of each owner.
        lam: weight of the normalised squared distance.
    """
    out = np.empty(flat.shape[0], np.float32)
    d = table.shape[1]
    lam32 = np.float32(lam)
    for j in prange(flat.shape[0]):
        row, i = flat[j], owner[j]
        acc = np.float32(0.0)
        for k in range(d):
            diff = table[row, k] - centres[i, k]
            acc += diff * diff
        out[j] = np.sqrt(acc) + lam32 * dist2[j] / spread2[i]
    return out


@njit(cache=True, parallel=True)
def banded_middle(x: np.ndarray, start: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """``out[a, i] = Σ_k weight[i, k] · x[a, start[i] + k]``: a banded matrix applied along
    the middle axis of a 3-D table; taps past the end of that axis have zero weight.

    Args:
        x: ``A×n×C`` (float).
        start: ``I int64`` first index of each output's band.
        weight: ``I×B``, the dtype of ``x``.
        out: ``A×I×C``, written.
    """
    n, channels = x.shape[1], x.shape[2]
    for a in prange(out.shape[0]):
        for i in range(out.shape[1]):
            for c in range(channels):
                out[a, i, c] = 0.0
            for k in range(weight.shape[1]):
                row = start[i] + k
                if row >= n:
                    break
                w = weight[i, k]
                for c in range(channels):
                    out[a, i, c] += w * x[a, row, c]
