"""Slow, obvious references for the geometry tests (``test_geometry``, ``test_points``).

They loop over all pairs of points and over every pixel of the image; they are written
independently of :mod:`xmask.geometry` (none of its helpers are reused). Circle membership is
evaluated in float32 exactly as the module documents it (pixel centre ``c + 0.5``,
``dx·dx + dy·dy <= r·r``) so that boundary ties resolve identically.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xmask.geometry.circles import CirclePixels

SEEDS = [0, 1, 2]
SIZES = [(32, 32), (24, 57), (61, 19)]  # (H, W), square and non-square both ways
TINY_SIZES = [(1, 1), (2, 5), (5, 2), (3, 3)]
F32 = np.float32


def random_points(rng: np.random.Generator, n: int, size: tuple[int, int], margin: float = 0.0):
    """``n`` points in ``[-margin, W+margin] × [-margin, H+margin]``, with exact duplicates,
    border points, pixel corners and pixel centres mixed in."""
    h, w = size
    pts = np.column_stack(
        [rng.uniform(-margin, w + margin, n), rng.uniform(-margin, h + margin, n)]
    ).astype(np.float64)
    if n >= 4:
        k = n // 4
        idx = rng.choice(n, size=k, replace=False)
        kind = rng.integers(0, 5, size=k)
        for i, t in zip(idx, kind, strict=True):
            if t == 0:  # pixel corner
                pts[i] = [rng.integers(0, w + 1), rng.integers(0, h + 1)]
            elif t == 1:  # pixel centre
                pts[i] = [rng.integers(0, w) + 0.5, rng.integers(0, h) + 0.5]
            elif t == 2:  # on the border
                pts[i] = [rng.choice([0.0, float(w)]), rng.uniform(0, h)]
            elif t == 3:
                pts[i] = [rng.uniform(0, w), rng.choice([0.0, float(h)])]
            else:  # exact duplicate of another point
                pts[i] = pts[rng.integers(0, n)]
    return pts


def bf_nnec(points, size, r_min, duplicates):
    """O(N²) double loop, plain Python floats."""
    pts = [(float(x), float(y)) for x, y in np.asarray(points, dtype=np.float64)]
    h, w = size
    r_max = 0.5 * min(h, w)
    out = []
    for i, (xi, yi) in enumerate(pts):
        best = math.inf
        for j, (xj, yj) in enumerate(pts):
            if j == i:
                continue
            if duplicates == "distinct" and xi == xj and yi == yj:
                continue
            dx, dy = xi - xj, yi - yj
            best = min(best, math.sqrt(dx * dx + dy * dy))
        r = r_max if best == math.inf else best
        out.append(min(max(r, r_min), r_max))
    return np.array(out, dtype=np.float32)


def bf_d2(point, size):
    """float32 squared distance from every pixel centre of the image to ``point`` (H×W)."""
    h, w = size
    px, py = F32(point[0]), F32(point[1])
    d2 = np.empty((h, w), dtype=np.float32)
    for r in range(h):
        dy = F32(F32(r) + F32(0.5)) - py
        for c in range(0, w):
            dx = F32(F32(c) + F32(0.5)) - px
            d2[r, c] = F32(F32(dx * dx) + F32(dy * dy))
    return d2


def bf_d2_fast(point, size):
    """Same as :func:`bf_d2`, vectorised over the whole image (used for the bigger cases)."""
    h, w = size
    px, py = F32(point[0]), F32(point[1])
    dx = (np.arange(w, dtype=np.float32) + F32(0.5)) - px
    dy = (np.arange(h, dtype=np.float32) + F32(0.5)) - py
    return (dy * dy)[:, None] + (dx * dx)[None, :]


def bf_circles(points, radii, size):
    """Every (point, x, y) whose pixel centre lies within the radius, scanning every pixel."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    rad = np.asarray(radii, dtype=np.float32).reshape(-1)
    entries = {}
    for i in range(len(pts)):
        d2 = bf_d2_fast(pts[i], size)
        inside = d2 <= F32(rad[i] * rad[i])
        for y, x in zip(*np.nonzero(inside), strict=True):
            entries[(i, int(x), int(y))] = float(d2[y, x])
    return entries


def bf_label_map(points, radii, size, cost_fn=None, keep_fn=None):
    """Per pixel: among circles containing it (and kept), the lowest cost, ties to low index."""
    h, w = size
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    rad = np.asarray(radii, dtype=np.float32).reshape(-1)
    n = len(pts)
    d2 = [bf_d2_fast(pts[i], size) for i in range(n)]
    out = np.zeros((h, w), dtype=np.int32)
    for y in range(h):
        for x in range(w):
            best_cost, best_i = math.inf, -1
            for i in range(n):
                if not d2[i][y, x] <= F32(rad[i] * rad[i]):
                    continue
                if keep_fn is not None and not keep_fn(i, x, y):
                    continue
                c = float(d2[i][y, x]) if cost_fn is None else cost_fn(i, x, y)
                if c < best_cost:  # strict: ties keep the lowest index
                    best_cost, best_i = c, i
            out[y, x] = best_i + 1
    return out


def check_csr(cp: CirclePixels, n: int, size: tuple[int, int]) -> None:
    """Layout invariants of a :class:`CirclePixels`."""
    h, w = size
    assert cp.size == (h, w)
    for name in ("point", "x", "y", "offsets"):
        assert getattr(cp, name).dtype == torch.int64, name
    assert cp.dist2.dtype == torch.float32
    p = len(cp)
    assert cp.point.shape == cp.x.shape == cp.y.shape == cp.dist2.shape == (p,)
    off = cp.offsets.cpu().numpy()
    assert off.shape == (n + 1,)
    assert off[0] == 0 and off[-1] == p
    assert np.all(np.diff(off) >= 0)
    point = cp.point.cpu().numpy()
    x, y = cp.x.cpu().numpy(), cp.y.cpu().numpy()
    np.testing.assert_array_equal(cp.counts.cpu().numpy(), np.diff(off))
    np.testing.assert_array_equal(cp.flat.cpu().numpy(), y * w + x)
    for i in range(n):
        s, e = off[i], off[i + 1]
        assert np.all(point[s:e] == i)
        key = y[s:e] * w + x[s:e]  # row-major order within a point, no repeats
        assert np.all(np.diff(key) > 0)
    if p:
        assert x.min() >= 0 and x.max() < w and y.min() >= 0 and y.max() < h


def as_entries(cp: CirclePixels) -> dict:
    return {
        (int(i), int(x), int(y)): float(d)
        for i, x, y, d in zip(
            cp.point.tolist(), cp.x.tolist(), cp.y.tolist(), cp.dist2.tolist(), strict=True
        )
    }
