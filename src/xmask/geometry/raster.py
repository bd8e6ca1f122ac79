"""The passes behind the circles and the label maps: rasterising circles into a ragged pixel
list and resolving overlaps by lowest cost.

Each runs a compiled loop (:mod:`xmask.geometry.kernels`) once those are ready, and its
vectorised NumPy twin here until then (a fresh install's first call never waits for a
compiler). Neither allocates more than a few arrays of the circle pixels' size (``P``) or of
the image's (``H·W``). Both give the results of the literal loops bit for bit (``float32``
arithmetic in the same order; tie rules kept): the tests check each against literal Python
references.
"""

from __future__ import annotations

import numpy as np

from xmask.geometry import kernels, label_kernels

_HALF = np.float32(0.5)
_NO_ENTRY = np.iinfo(np.int64).max
_ENTRIES = (np.int64, np.int64, np.float32, np.bool_)
"""The types of ``flat``, ``owner``, ``cost`` and ``allowed`` the compiled loop takes."""


def _span(centre: np.ndarray, radius: np.ndarray, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last pixel whose centre may lie within ``radius`` along one axis
    (``N float32`` centres and radii → two ``N int64``)."""
    first = np.maximum(np.ceil(centre - radius - _HALF).astype(np.int64), 0)
    last = np.minimum(np.floor(centre + radius - _HALF).astype(np.int64), n_pixels - 1)
    return first, np.maximum(last + 1, first)


def ragged_arange(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(run, position)``, each ``Σ lengths int64``: for runs of the given lengths laid end
    to end, the run of each element and its position within it."""
    run = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return run, np.arange(len(run)) - starts[run]


def circle_table(
    points: np.ndarray, radii: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, ...]:
    """Pixel centres within ``radii[i]`` of ``points[i]`` (``float32`` arithmetic), point by
    point, each circle in row-major order, as CSR arrays.

    Each circle row is one run of columns: the test ``dx² + dy² <= r²`` is monotone in
    ``|dx|`` (every ``float32`` step rounds monotonically). The run's ends are first estimated
    from ``sqrt(r² − dy²)`` and widened by ``1 + ⌈r / 1024⌉`` pixels, more than ``float32``
    rounding can move them (``r / 2000`` at most); each end then moves inward until the exact
    test holds. Work and memory ``O(P + Σ r_i)``.

    Args:
        points: ``N×2 float32`` ``(x, y)`` pixels.
        radii: ``N float32``.
        height, width: the image size.

    Returns:
        ``(offsets, owner, xs, ys, flat, dist2)``: ``N+1 int64`` offsets, then per entry the
        point, column, row, row-major index ``y·W + x`` (``int64``) and squared distance
        (``float32``).
    """
    if kernels.ready("circle_table"):
        return label_kernels.circle_table(points, radii, height, width)
    px, py = points[:, 0], points[:, 1]
    x0, x1 = _span(px, radii, width)
    y0, y1 = _span(py, radii, height)
    row_owner, row_index = ragged_arange(y1 - y0)
    ys = y0[row_owner] + row_index
    dy = ys.astype(np.float32) + _HALF - py[row_owner]
    dy2 = dy * dy
    r2 = radii[row_owner] * radii[row_owner]
    centre, low, high = px[row_owner], x0[row_owner], x1[row_owner]

    def inside(x: np.ndarray) -> np.ndarray:
        dx = x.astype(np.float32) + _HALF - centre
        return dx * dx + dy2 <= r2

    half = np.sqrt(np.maximum(r2.astype(np.float64) - dy2, 0.0))
    pad = 1 + np.ceil(radii[row_owner] / np.float32(1024)).astype(np.int64)
    start = np.clip(np.ceil(centre - 0.5 - half).astype(np.int64) - pad, low, high)
    stop = np.clip(np.floor(centre - 0.5 + half).astype(np.int64) + 1 + pad, start, high)
    while True:
        move_start = (start < stop) & ~inside(start)
        move_stop = (stop > start + move_start) & ~inside(stop - 1)
        if not (move_start.any() or move_stop.any()):
            break
        start += move_start
        stop -= move_stop
    widths = stop - start
    row_bounds = np.concatenate([[0], np.cumsum(y1 - y0)])
    offsets = np.concatenate([[0], np.cumsum(widths)])[row_bounds]
    row, column = ragged_arange(widths)
    xs = start[row] + column
    owner, ys = row_owner[row], ys[row]
    dx = xs.astype(np.float32) + _HALF - px[owner]
    return offsets, owner, xs, ys, ys * width + xs, dx * dx + dy2[row]


def forced_costs(
    cost: np.ndarray, keep: np.ndarray, own: np.ndarray, seed: np.ndarray, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Costs and permissions of the annotation rules (:func:`xmask.geometry.labels.resolve_labels`):
    an entry that is its head's own point pixel costs −1 and one that is a co-located head's
    seed −0.5, and both are always allowed; any other entry is allowed where ``keep`` and
    ``split`` (the co-located heads' angular runs) both allow it.

    Args:
        cost: ``P float32``.
        keep, own, seed, split: ``P bool``.

    Returns:
        ``(cost, allowed)``: ``P float32``, ``P bool``.
    """
    forced = np.where(seed, np.float32(-0.5), cost.astype(np.float32, copy=False))
    return np.where(own, np.float32(-1.0), forced), own | seed | (keep & split)


def lowest_cost_labels(
    flat: np.ndarray,
    owner: np.ndarray,
    cost: np.ndarray,
    allowed: np.ndarray,
    n_pixels: int,
    n_owners: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each allowed entry's pixel goes to the owner of lowest cost (ties to the lowest owner).

    One scatter-min of a 64-bit key per entry: the cost's ``float32`` bits mapped to an
    integer of the same order (``−0`` counted as ``+0``) above the label ``owner + 1``, so the
    smallest key is the lowest cost and, among equal costs, the lowest owner.

    Args:
        flat: ``P int64`` pixel index of each entry, in ``[0, n_pixels)``.
        owner: ``P int64`` owner of each entry, in ``[0, n_owners)``.
        cost: ``P float32``, never NaN (an infinite cost still labels its pixel).
        allowed: ``P bool``.

    Returns:
        ``(labels, area)``: ``n_pixels int32`` (``owner + 1``, 0 where no entry is allowed)
        and ``n_owners int64`` pixels won by each owner.
    """
    if kernels.ready("lowest_cost_labels"):
        typed = (
            np.ascontiguousarray(a, t)
            for t, a in zip(_ENTRIES, (flat, owner, cost, allowed), strict=True)
        )
        return label_kernels.lowest_cost_labels(*typed, n_pixels, n_owners)
    chosen = np.flatnonzero(allowed)
    bits = (cost[chosen].astype(np.float32) + np.float32(0.0)).view(np.int32)
    ordered = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)
    best = np.full(n_pixels, _NO_ENTRY, dtype=np.int64)
    np.minimum.at(best, flat[chosen], (ordered << 32) | (owner[chosen] + 1))
    labels = np.where(best == _NO_ENTRY, 0, best & 0xFFFFFFFF).astype(np.int32)
    area = np.bincount(labels, minlength=n_owners + 1)[1:].astype(np.int64)
    return labels, area
