"""The passes of :mod:`xmask.geometry.raster` against literal loops (each with the compiled
loop and with its NumPy twin), and the twins of the compiled kernels
(:mod:`xmask.geometry.kernels`) against the kernels, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xmask.geometry import kernels, label_kernels, labels, raster
from xmask.geometry.points import pixel_of

HALF = np.float32(0.5)


def literal_circles(points: np.ndarray, radii: np.ndarray, h: int, w: int) -> tuple:
    """Every pixel of each circle's box tested in ``float32``, point by point, row-major."""
    owner, xs, ys, dist2, counts = [], [], [], [], []
    for i, ((px, py), r) in enumerate(zip(points, radii, strict=True)):
        count = 0
        y0 = max(math.ceil(py - r - HALF), 0)
        x0 = max(math.ceil(px - r - HALF), 0)
        for y in range(y0, min(math.floor(py + r - HALF), h - 1) + 1):
            dy = np.float32(y) + HALF - py
            for x in range(x0, min(math.floor(px + r - HALF), w - 1) + 1):
                dx = np.float32(x) + HALF - px
                if dx * dx + dy * dy <= r * r:
                    owner.append(i), xs.append(x), ys.append(y), dist2.append(dx * dx + dy * dy)
                    count += 1
        counts.append(count)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    xs, ys = np.array(xs, np.int64), np.array(ys, np.int64)
    return offsets, np.array(owner, np.int64), xs, ys, ys * w + xs, np.array(dist2, np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_circle_table_matches_literal_loop(seed, kernel_path):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    n = int(rng.integers(0, 12))
    # quarter-pixel positions and radii make exact tangencies (dx² + dy² == r²) common
    points = (rng.integers(0, 4 * w + 1, (n, 2)) / 4.0).astype(np.float32)
    points[:, 1] = (rng.integers(0, 4 * h + 1, n) / 4.0).astype(np.float32)
    radii = (rng.integers(0, 60, n) / 4.0).astype(np.float32)
    got, want = raster.circle_table(points, radii, h, w), literal_circles(points, radii, h, w)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_circle_table_large_radius_rows_tangent(kernel_path):
    """A radius of thousands of pixels: float32 rounding moves the run ends furthest."""
    points = np.array([[2500.3, 2.7], [0.5, 4000.5]], np.float32)
    radii = np.array([3000.0, 3999.9], np.float32)
    h, w = 8, 5200
    got, want = raster.circle_table(points, radii, h, w), literal_circles(points, radii, h, w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def literal_labels(flat, owner, cost, allowed, n_pixels, n_owners):
    """The scan of the former compiled loop: lower cost wins, ties to the lower owner."""
    best = np.full(n_pixels, np.inf, np.float32)
    labels = np.zeros(n_pixels, np.int32)
    for f, o, c, ok in zip(flat, owner, cost, allowed, strict=True):
        if ok and (c < best[f] or (c == best[f] and (labels[f] == 0 or o + 1 < labels[f]))):
            best[f], labels[f] = c, o + 1
    return labels, np.bincount(labels, minlength=n_owners + 1)[1:].astype(np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_lowest_cost_labels_matches_literal_loop(seed, kernel_path):
    rng = np.random.default_rng(seed)
    n_pixels, n_owners, p = 30, 7, 200
    flat = rng.integers(0, n_pixels, p)
    owner = rng.integers(0, n_owners, p)
    # few distinct values: many ties; signed zeros and infinities among them
    cost = rng.choice(np.array([-np.inf, -1, -0.5, -0.0, 0.0, 0.25, 3e38, np.inf]), p)
    allowed = rng.random(p) < 0.8
    args = (flat, owner, cost.astype(np.float32), allowed, n_pixels, n_owners)
    got, want = raster.lowest_cost_labels(*args), literal_labels(*args)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_forced_costs_rules():
    cost = np.array([0.3, 0.3, 0.3, 0.3, 0.3], np.float32)
    keep = np.array([False, False, True, True, False])
    own = np.array([True, False, False, False, False])
    seed = np.array([True, True, False, False, False])
    split = np.array([False, False, True, False, True])
    costs, allowed = raster.forced_costs(cost, keep, own, seed, split)
    np.testing.assert_array_equal(costs, np.array([-1, -0.5, 0.3, 0.3, 0.3], np.float32))
    np.testing.assert_array_equal(allowed, [True, True, True, False, False])
    assert costs.dtype == np.float32


@pytest.mark.parametrize("seed", range(3))
def test_energy_twin_equals_kernel(seed):
    rng = np.random.default_rng(seed)
    pixels, dim, heads, p = 50, 16, 6, 3000
    table = rng.normal(size=(pixels, dim)).astype(np.float32)
    flat, owner = rng.integers(0, pixels, p), rng.integers(0, heads, p)
    dist2 = rng.uniform(0, 100, p).astype(np.float32)
    centres = rng.normal(size=(heads, dim)).astype(np.float32)
    spread2 = rng.uniform(1, 100, heads).astype(np.float32)
    args = (table, flat, owner, dist2, centres, spread2, 0.8)
    twin = kernels._circle_energy_numpy(*args, chunk=1000)
    np.testing.assert_array_equal(twin, kernels._circle_energy_loop(*args))


@pytest.mark.parametrize("shape", [(1, 9, 5), (7, 12, 3)])
def test_banded_twin_equals_kernel(shape):
    rng = np.random.default_rng(0)
    a, n, c = shape
    outputs, band = 4 * n, 4
    x = rng.normal(size=shape).astype(np.float32)
    start = np.minimum(np.arange(outputs) // 4, n - 1).astype(np.int64)  # bands run off the end
    weight = rng.normal(size=(outputs, band)).astype(np.float32)
    out_loop = np.full((a, outputs, c), np.nan, np.float32)
    out_twin = np.full((a, outputs, c), np.nan, np.float32)
    needed = rng.random((a, outputs)) < 0.6
    kernels._banded_middle_loop(x, start, weight, out_loop, needed)
    kernels._banded_middle_numpy(x, start, weight, out_twin, chunk=50)
    np.testing.assert_array_equal(out_twin[needed], out_loop[needed])
    assert np.isnan(out_loop[~needed]).all()  # skipped, not written
    kernels.banded_middle(x, start, weight, out_loop)  # None: every output
    np.testing.assert_array_equal(out_twin, out_loop)


def test_warm_up_switches_to_the_compiled_kernels():
    kernels.warm_up()
    kernels.warm_up()  # once per process
    kernels._warm_up.join()
    assert not kernels._pending


def _random_labels(rng, size, n, radii, keep):
    """``n`` random points and the label map of random costs over their circles (radii drawn
    from ``radii``; a pixel kept with probability ``keep``): many small pieces."""
    h, w = size
    points = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1).astype(np.float32)
    _, owner, _, _, flat, _ = raster.circle_table(
        points, rng.uniform(*radii, n).astype(np.float32), h, w
    )
    cost = rng.random(len(flat)).astype(np.float32)
    label_map, _ = raster.lowest_cost_labels(flat, owner, cost, cost < keep, h * w, n)
    return points, label_map.reshape(h, w)


@pytest.mark.parametrize("seed", range(4))
def test_connected_masks_kernel_equals_its_twin(seed, monkeypatch):
    """A label map of many small pieces (random costs over overlapping circles): ties between
    equal pieces, holes touching several heads, pieces at the border."""
    h, w = 60, 80
    points, label_map = _random_labels(np.random.default_rng(seed), (h, w), 40, (2, 9), 0.7)
    compiled = label_kernels.connected_masks(label_map, pixel_of(points, (h, w)))
    monkeypatch.setattr(kernels, "_pending", {"connected_masks"})
    twin = labels.connected_masks(label_map, points)
    for a, b in zip(compiled, twin, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_compiled_loops_refuse_out_of_range_input():
    """The loops do not check bounds as NumPy does: bad input must raise, never write
    outside an array."""
    index = np.array([0, 5], np.int64)
    cost, allowed = np.zeros(2, np.float32), np.ones(2, bool)
    with pytest.raises(ValueError, match="out of range"):
        label_kernels.lowest_cost_labels(index, np.zeros(2, np.int64), cost, allowed, 4, 1)
    with pytest.raises(ValueError, match="out of range"):
        label_kernels.lowest_cost_labels(np.zeros(2, np.int64), index, cost, allowed, 4, 1)
    label_map = np.array([[1, 0], [0, 3]], np.int32)
    with pytest.raises(ValueError, match="a head's number"):
        label_kernels.connected_masks(label_map, np.zeros((2, 2), np.int64))


@pytest.mark.parametrize("seed", range(4))
def test_connected_masks_of_a_few_heads_equal_all_of_them(seed):
    """Given the heads that may break the rule (here: heads given pixels deep inside their
    neighbours, which stay whole), the compiled loop's work on them alone gives the masks of
    the whole pass: the pixels they give up become holes of those neighbours, filled too."""
    rng = np.random.default_rng(10 + seed)
    h, w, n = 60, 80, 30
    points, label_map = _random_labels(rng, (h, w), n, (6, 14), 1.0)
    coherent, _ = labels.connected_masks(label_map, points)
    broken = coherent.copy()
    cells = pixel_of(points, (h, w))
    takers = rng.choice(n, 4, replace=False)
    for k in takers:  # head k takes pixels whose 3×3 is all one other head (not a point pixel)
        centre = broken[1:-1, 1:-1]
        inside = (centre > 0) & (centre != k + 1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inside &= broken[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] == centre
        rows, cols = cells[:, 1] - 1, cells[:, 0] - 1
        keep = (rows >= 0) & (rows < h - 2) & (cols >= 0) & (cols < w - 2)
        inside[rows[keep], cols[keep]] = False
        ys, xs = np.nonzero(inside)
        pick = rng.choice(len(ys), min(3, len(ys)), replace=False)
        broken[ys[pick] + 1, xs[pick] + 1] = k + 1
    whole = label_kernels.connected_masks(broken, cells)
    few = label_kernels.connected_masks(broken, cells, takers)
    assert not np.array_equal(whole[0], broken)  # there was something to mend
    for a, b in zip(whole, few, strict=True):
        np.testing.assert_array_equal(a, b)
