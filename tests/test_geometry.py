"""Tests of :mod:`xmask.geometry` against slow, obvious brute-force references.

The references below loop over all pairs of points and over every pixel of the image; they are
written independently of the module (none of its helpers are reused). Circle membership is
evaluated in float32 exactly as the module documents it (pixel centre ``c + 0.5``,
``dx·dx + dy·dy <= r·r``) so that boundary ties resolve identically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from xmask.geometry.circles import CirclePixels, circle_pixels, label_map, nnec_radii
from xmask.geometry.points import (
    FREE_PIXEL_RING,
    distinct_pixels,
    duplicate_mask,
    flip_points_horizontal,
    inside_image,
    normalized_coords,
    pixel_of,
    scale_points,
    translate_points,
)

SEEDS = [0, 1, 2]
SIZES = [(32, 32), (24, 57), (61, 19)]  # (H, W), square and non-square both ways
TINY_SIZES = [(1, 1), (2, 5), (5, 2), (3, 3)]
F32 = np.float32

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# nnec_radii
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", [2, 3, 17, 120])
@pytest.mark.parametrize("duplicates", ["floor", "distinct"])
@pytest.mark.parametrize("r_min", [0.0, 3.0])
def test_nnec_matches_bruteforce(seed, size, n, duplicates, r_min):
    rng = np.random.default_rng(seed)
    pts = random_points(rng, n, size, margin=3.0)
    if seed == 2:  # quarter-pixel grid: many exactly equal distances and duplicates
        pts = np.round(pts * 4) / 4
    before = pts.copy()
    got = nnec_radii(pts, size, r_min=r_min, duplicates=duplicates)
    ref = bf_nnec(pts, size, r_min, duplicates)
    assert got.dtype == np.float32 and got.shape == (n,)
    # Same float64 formula then a float32 cast: equal up to the float32 rounding.
    np.testing.assert_array_max_ulp(got, ref, maxulp=1)
    np.testing.assert_array_equal(pts, before)


def test_nnec_many_points_vs_pairwise_matrix():
    rng = np.random.default_rng(7)
    size = (300, 500)
    pts = np.round(random_points(rng, 1500, size) * 8) / 8
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ref = np.clip(d.min(1), 3.0, 150.0).astype(np.float32)
    np.testing.assert_array_max_ulp(nnec_radii(pts, size), ref, maxulp=1)
    d[d == 0] = np.inf
    ref = np.clip(d.min(1), 3.0, 150.0).astype(np.float32)
    np.testing.assert_array_max_ulp(nnec_radii(pts, size, duplicates="distinct"), ref, maxulp=1)


@pytest.mark.parametrize("duplicates", ["floor", "distinct"])
def test_nnec_zero_points(duplicates):
    r = nnec_radii(np.zeros((0, 2)), (10, 20), duplicates=duplicates)
    assert r.shape == (0,) and r.dtype == np.float32


@pytest.mark.parametrize("duplicates", ["floor", "distinct"])
@pytest.mark.parametrize(
    ("size", "r_min", "expected"),
    [((100, 40), 3.0, 20.0), ((40, 100), 3.0, 20.0), ((2, 5), 3.0, 1.0), ((1, 1), 3.0, 0.5),
     ((1, 1), 0.0, 0.5), ((9, 9), 0.0, 4.5), ((9, 9), 100.0, 4.5)],
)  # fmt: skip
def test_nnec_one_point(duplicates, size, r_min, expected):
    r = nnec_radii(np.array([[0.3, 0.7]]), size, r_min=r_min, duplicates=duplicates)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, [expected])


@pytest.mark.parametrize("duplicates", ["floor", "distinct"])
def test_nnec_two_points(duplicates):
    pts = np.array([[10.0, 10.0], [13.0, 14.0]])  # distance 5
    np.testing.assert_array_equal(nnec_radii(pts, (50, 60), duplicates=duplicates), [5, 5])
    np.testing.assert_array_equal(nnec_radii(pts, (50, 60), r_min=6, duplicates=duplicates), [6, 6])
    # upper clamp 0.5·min(H, W) = 2 wins
    np.testing.assert_array_equal(nnec_radii(pts, (4, 60), duplicates=duplicates), [2, 2])
    np.testing.assert_array_equal(
        nnec_radii(pts, (60, 5), r_min=0, duplicates=duplicates), [2.5, 2.5]
    )


def test_nnec_r_min_floor():
    pts = np.array([[5.0, 5.0], [6.0, 5.0], [20.0, 20.0]])
    np.testing.assert_allclose(nnec_radii(pts, (60, 60)), [3, 3, math.hypot(14, 15)], rtol=1e-6)
    np.testing.assert_allclose(
        nnec_radii(pts, (60, 60), r_min=0), [1, 1, math.hypot(14, 15)], rtol=1e-6
    )


def test_nnec_duplicates():
    p, q = [10.0, 10.0], [16.0, 18.0]  # |p - q| = 10
    pts = np.array([p, q, p, p])
    np.testing.assert_array_equal(nnec_radii(pts, (100, 100), duplicates="floor"), [3, 10, 3, 3])
    np.testing.assert_array_equal(
        nnec_radii(pts, (100, 100), r_min=0, duplicates="floor"), [0, 10, 0, 0]
    )
    np.testing.assert_array_equal(
        nnec_radii(pts, (100, 100), duplicates="distinct"), [10, 10, 10, 10]
    )


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize(("size", "r_max"), [((30, 50), 15.0), ((1, 1), 0.5), ((2, 5), 1.0)])
def test_nnec_all_identical(n, size, r_max):
    pts = np.tile([[0.5, 0.5]], (n, 1))
    np.testing.assert_array_equal(nnec_radii(pts, size, duplicates="floor"), [min(3, r_max)] * n)
    np.testing.assert_array_equal(nnec_radii(pts, size, duplicates="distinct"), [r_max] * n)


@pytest.mark.parametrize("size", TINY_SIZES)
@pytest.mark.parametrize("duplicates", ["floor", "distinct"])
def test_nnec_tiny_images_upper_clamp_wins(size, duplicates):
    # r_min = 3 > 0.5·min(H, W): every radius is the upper bound
    h, w = size
    pts = np.array([[0.0, 0.0], [w, h], [w / 2, h / 2], [w / 2, h / 2]], dtype=np.float64)
    r = nnec_radii(pts, size, r_min=3.0, duplicates=duplicates)
    np.testing.assert_array_equal(r, np.full(4, 0.5 * min(size), dtype=np.float32))


def test_nnec_bad_policy():
    with pytest.raises(ValueError, match="duplicates"):
        nnec_radii(np.zeros((3, 2)), (10, 10), duplicates="merge")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# circle_pixels
# --------------------------------------------------------------------------------------------


def check_against_bruteforce(pts, radii, size, cp=None):
    n = len(np.asarray(radii).reshape(-1))
    if cp is None:
        cp = circle_pixels(pts, radii, size)
    check_csr(cp, n, size)
    got = as_entries(cp)
    ref = bf_circles(pts, radii, size)
    assert got.keys() == ref.keys()
    assert len(got) == len(cp)  # no (point, x, y) repeated
    # dist2: the same float32 arithmetic as the reference, so bit-identical.
    keys = sorted(got)
    np.testing.assert_array_equal(
        np.array([got[k] for k in keys], dtype=np.float32),
        np.array([ref[k] for k in keys], dtype=np.float32),
    )
    if len(cp):
        p = np.asarray(pts, dtype=np.float32).astype(np.float64).reshape(-1, 2)
        i, x, y = cp.point.numpy(), cp.x.numpy(), cp.y.numpy()
        exact = (x + 0.5 - p[i, 0]) ** 2 + (y + 0.5 - p[i, 1]) ** 2
        np.testing.assert_allclose(cp.dist2.numpy(), exact, rtol=1e-5, atol=1e-4)
    # memory ∝ Σ r²: at most the bounding boxes, (2r+1)² <= 4(r+1)² per circle
    r = np.asarray(radii, dtype=np.float64).reshape(-1)
    assert len(cp) <= np.sum((2 * np.maximum(r, 0) + 1) ** 2) <= 4 * np.sum((r + 1) ** 2) + 1e-9
    return cp


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", [1, 2, 9, 60])
@pytest.mark.parametrize("radius", ["nnec", "random", "quarter"])
def test_circle_pixels_matches_bruteforce(seed, size, n, radius):
    rng = np.random.default_rng(100 + seed)
    pts = random_points(rng, n, size, margin=4.0)  # some points partly/fully outside
    if radius == "nnec":
        radii = nnec_radii(pts, size)
    elif radius == "random":
        radii = rng.uniform(0, 9, n).astype(np.float32)
        radii[rng.random(n) < 0.2] = 0.0
    else:  # points and radii on a quarter grid: many exact boundary ties
        pts = np.round(pts * 4) / 4
        radii = (rng.integers(0, 40, n) / 4).astype(np.float32)
    pts_before, radii_before = pts.copy(), radii.copy()
    cp = check_against_bruteforce(pts, radii, size)
    np.testing.assert_array_equal(pts, pts_before)
    np.testing.assert_array_equal(radii, radii_before)
    # torch input (float64 and float32) gives the same result as numpy input
    for dtype in (torch.float64, torch.float32):
        cpt = circle_pixels(torch.as_tensor(pts, dtype=dtype), torch.as_tensor(radii), size)
        for name in ("point", "x", "y", "dist2", "offsets"):
            assert torch.equal(getattr(cpt, name), getattr(cp, name)), name


def test_circle_pixels_bruteforce_pure_python_loop():
    """One case checked with the pure-Python per-pixel loop (also checks ``bf_d2_fast``)."""
    rng = np.random.default_rng(5)
    size = (13, 21)
    pts = random_points(rng, 8, size, margin=2.0)
    radii = rng.uniform(0, 6, 8).astype(np.float32)
    for p in pts:
        np.testing.assert_array_equal(bf_d2(p, size), bf_d2_fast(p, size))
    check_against_bruteforce(pts, radii, size)


def test_circle_pixels_exact_plus_shape():
    cp = circle_pixels(np.array([[5.5, 5.5]]), np.array([1.0]), (20, 20))
    # centre and its 4 neighbours, row-major
    assert list(zip(cp.x.tolist(), cp.y.tolist(), strict=True)) == [
        (5, 4),
        (4, 5),
        (5, 5),
        (6, 5),
        (5, 6),
    ]
    assert cp.dist2.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert cp.point.tolist() == [0] * 5 and cp.offsets.tolist() == [0, 5]
    # just below 1: only the centre pixel; sqrt(2): the full 3×3 block
    assert len(circle_pixels(np.array([[5.5, 5.5]]), np.array([0.999]), (20, 20))) == 1
    assert (
        len(circle_pixels(np.array([[5.5, 5.5]]), np.array([math.sqrt(2) + 1e-6]), (20, 20))) == 9
    )


@pytest.mark.parametrize(
    ("point", "radius", "expected"),
    [
        ((5.5, 5.5), 0.0, [(5, 5)]),  # radius 0 at a pixel centre: that pixel (distance 0 <= 0)
        ((5.0, 5.0), 0.0, []),  # radius 0 at a corner: no centre
        ((5.0, 5.0), 0.5, []),  # tiny circle containing no pixel centre
        ((5.2, 5.7), 0.1, []),
        ((5.0, 5.0), 0.71, [(4, 4), (5, 4), (4, 5), (5, 5)]),  # corner, sqrt(0.5) = 0.7071
        ((0.0, 0.0), 1.0, [(0, 0)]),  # image corner: clipped
        ((0.0, 0.0), 2.0, [(0, 0), (1, 0), (0, 1)]),
        ((10.0, 8.0), 1.0, [(9, 7)]),  # bottom-right corner x = W, y = H
        ((-0.5, 3.5), 1.0, [(0, 3)]),  # centre outside, circle partly inside
        ((-1.6, 3.5), 2.0, []),  # circle entirely left of the image
        ((30.0, 30.0), 5.0, []),  # far outside
    ],
)
def test_circle_pixels_hand_cases(point, radius, expected):
    size = (8, 10)
    cp = circle_pixels(np.array([point]), np.array([radius]), size)
    check_csr(cp, 1, size)
    assert list(zip(cp.x.tolist(), cp.y.tolist(), strict=True)) == expected
    check_against_bruteforce(np.array([point]), np.array([radius]), size)


@pytest.mark.parametrize("size", TINY_SIZES)
def test_circle_pixels_tiny_images(size):
    h, w = size
    pts = np.array([[0.0, 0.0], [w, h], [w / 2, h / 2], [w / 2, h / 2], [0.5, 0.5]])
    for duplicates in ("floor", "distinct"):
        radii = nnec_radii(pts, size, r_min=3.0, duplicates=duplicates)
        check_against_bruteforce(pts, radii, size)
    # a big radius covers the whole image, clipped
    cp = check_against_bruteforce(pts[2:3], np.array([10.0]), size)
    assert len(cp) == h * w


def test_circle_pixels_zero_points():
    cp = circle_pixels(np.zeros((0, 2)), np.zeros(0), (7, 9))
    check_csr(cp, 0, (7, 9))
    assert len(cp) == 0 and cp.offsets.tolist() == [0]
    cp = circle_pixels(torch.zeros(0, 2), torch.zeros(0), (7, 9))
    assert len(cp) == 0 and cp.offsets.tolist() == [0]


def test_circle_pixels_empty_circles_between_full_ones():
    pts = np.array([[3.0, 3.0], [100.0, 100.0], [5.5, 5.5], [1.0, 1.0], [7.5, 2.5]])
    radii = np.array([2.0, 3.0, 0.0, 0.3, 1.5])
    cp = check_against_bruteforce(pts, radii, (10, 10))
    assert cp.counts.tolist()[1] == 0 and cp.counts.tolist()[2] == 1 and cp.counts.tolist()[3] == 0


@pytest.mark.parametrize("r", [3.0, 7.5, 20.0, 41.3])
def test_circle_pixels_count_close_to_area(r):
    cp = circle_pixels(np.array([[50.3, 49.8]]), np.array([r]), (100, 100))
    # the unit squares of the counted pixels lie between the disks of radius r ∓ √2/2
    assert math.pi * (r - math.sqrt(0.5)) ** 2 <= len(cp) <= math.pi * (r + math.sqrt(0.5)) ** 2


def test_circle_pixels_memory_independent_of_image_size():
    # an H×W allocation on a 10⁵×10⁵ image would need tens of GB
    size = (100_000, 100_000)
    pts = np.array([[10.5, 10.5], [99_990.0, 50_000.0], [0.0, 99_999.5]])
    radii = np.array([3.0, 4.0, 2.0])
    cp = circle_pixels(pts, radii, size)
    check_csr(cp, 3, size)
    assert len(cp) <= np.sum((2 * radii + 1) ** 2)
    assert cp.counts.tolist()[0] == 29  # lattice points within radius 3 of a lattice point


# --------------------------------------------------------------------------------------------
# label_map
# --------------------------------------------------------------------------------------------


def cost_fn(i, x, y):
    """Integer-valued costs: many ties, resolved to the lowest point index."""
    return float((i * 13 + x * 7 + y * 3) % 5)


def keep_fn(i, x, y):
    return (i * 7 + x * 3 + y * 5) % 3 != 0


def tensor_of(fn, cp, dtype=None):
    vals = [
        fn(i, x, y) for i, x, y in zip(cp.point.tolist(), cp.x.tolist(), cp.y.tolist(), strict=True)
    ]
    return torch.tensor(vals, dtype=dtype, device=cp.point.device)


def check_label_map(lm, cp, size):
    h, w = size
    assert lm.dtype == torch.int32 and lm.shape == (h, w)
    lm = lm.cpu().numpy()
    assert lm.min() >= 0 and lm.max() <= len(cp.offsets) - 1
    covered = np.zeros((h, w), dtype=bool)
    covered[cp.y.cpu().numpy(), cp.x.cpu().numpy()] = True
    assert np.all(lm[~covered] == 0)


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("n", [2, 12, 50])
@pytest.mark.parametrize("variant", ["default", "cost", "keep", "cost+keep"])
def test_label_map_matches_bruteforce(seed, size, n, variant):
    rng = np.random.default_rng(200 + seed)
    pts = random_points(rng, n, size, margin=2.0)
    # radii bigger than NNEC so that circles overlap a lot
    radii = nnec_radii(pts, size, r_min=2.0) * F32(rng.uniform(1.0, 2.5))
    cp = circle_pixels(pts, radii, size)
    c_fn = cost_fn if "cost" in variant else None
    k_fn = keep_fn if "keep" in variant else None
    cost = tensor_of(c_fn, cp, torch.float32) if c_fn else None
    keep = tensor_of(k_fn, cp, torch.bool) if k_fn else None
    lm = label_map(cp, cost=cost, keep=keep)
    check_label_map(lm, cp, size)
    ref = bf_label_map(pts, radii, size, c_fn, k_fn)
    np.testing.assert_array_equal(lm.numpy(), ref)
    if variant == "default":
        # every pixel inside at least one circle is labelled
        covered = np.zeros(size, dtype=bool)
        covered[cp.y.numpy(), cp.x.numpy()] = True
        assert np.all((lm.numpy() > 0) == covered)
        # ... with a circle that contains it
        lab = lm.numpy()[cp.y.numpy(), cp.x.numpy()] - 1
        owners = set(zip(cp.point.tolist(), cp.x.tolist(), cp.y.tolist(), strict=True))
        ys, xs = np.nonzero(lm.numpy())
        assert all(
            (int(lm[y, x]) - 1, int(x), int(y)) in owners for y, x in zip(ys, xs, strict=True)
        )
        assert lab.shape == cp.point.shape


def test_label_map_voronoi_split_two_points():
    pts = np.array([[4.0, 5.0], [10.0, 5.0]])  # bisector x = 7, on a pixel border
    cp = circle_pixels(pts, np.array([6.0, 6.0]), (10, 14))
    lm = label_map(cp).numpy()
    xs = np.arange(14)
    row = lm[5]
    assert np.all(row[(xs < 7) & (row > 0)] == 1) and np.all(row[(xs >= 7) & (row > 0)] == 2)
    # exact tie on the bisector goes to the lower index
    pts = np.array([[4.0, 5.0], [11.0, 5.0]])  # bisector x = 7.5: column 7's centre
    lm = label_map(circle_pixels(pts, np.array([6.0, 6.0]), (10, 14))).numpy()
    assert np.all(lm[:, 7][lm[:, 7] > 0] == 1)
    assert np.all(lm[:, 8][lm[:, 8] > 0] == 2)


@pytest.mark.parametrize("policy", ["floor", "distinct"])
def test_label_map_duplicates_go_to_first_copy(policy):
    pts = np.array([[8.0, 8.0], [20.0, 9.0], [8.0, 8.0], [8.0, 8.0]])
    size = (20, 30)
    radii = nnec_radii(pts, size, duplicates=policy)
    cp = circle_pixels(pts, radii, size)
    lm = label_map(cp)
    np.testing.assert_array_equal(lm.numpy(), bf_label_map(pts, radii, size))
    labels = set(np.unique(lm.numpy()).tolist())
    assert 3 not in labels and 4 not in labels and {1, 2} <= labels


def test_label_map_all_identical():
    pts = np.tile([[6.3, 4.1]], (5, 1))
    size = (12, 15)
    for policy in ("floor", "distinct"):
        radii = nnec_radii(pts, size, duplicates=policy)
        lm = label_map(circle_pixels(pts, radii, size)).numpy()
        assert set(np.unique(lm).tolist()) == {0, 1}
        np.testing.assert_array_equal(lm, bf_label_map(pts, radii, size))


def test_label_map_keep_nothing_and_zero_points():
    pts = np.array([[3.0, 3.0], [6.0, 4.0]])
    cp = circle_pixels(pts, np.array([3.0, 3.0]), (8, 9))
    lm = label_map(cp, keep=torch.zeros(len(cp), dtype=torch.bool))
    assert lm.dtype == torch.int32 and lm.shape == (8, 9) and not lm.any()
    lm = label_map(circle_pixels(np.zeros((0, 2)), np.zeros(0), (4, 3)))
    assert lm.dtype == torch.int32 and lm.shape == (4, 3) and not lm.any()


@pytest.mark.parametrize("size", TINY_SIZES)
def test_label_map_tiny_images(size):
    h, w = size
    pts = np.array([[0.0, 0.0], [w, h], [w / 2, h / 2], [0.5, 0.5]])
    radii = nnec_radii(pts, size)
    cp = circle_pixels(pts, radii, size)
    lm = label_map(cp)
    check_label_map(lm, cp, size)
    np.testing.assert_array_equal(lm.numpy(), bf_label_map(pts, radii, size))


def test_label_map_float64_cost():
    pts = np.array([[3.0, 3.0], [5.0, 4.0]])
    cp = circle_pixels(pts, np.array([3.0, 3.0]), (8, 9))
    cost = tensor_of(cost_fn, cp, torch.float64)
    np.testing.assert_array_equal(
        label_map(cp, cost=cost).numpy(),
        bf_label_map(pts, [3.0, 3.0], (8, 9), cost_fn),
    )


# --------------------------------------------------------------------------------------------
# CUDA vs CPU
# --------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", [*SIZES, (1, 1), (2, 5)])
def test_cuda_matches_cpu(seed, size):
    rng = np.random.default_rng(300 + seed)
    pts = random_points(rng, 40, size, margin=3.0)
    radii = nnec_radii(pts, size, r_min=2.0) * F32(1.7)
    cpu = circle_pixels(pts, radii, size)
    gpu = circle_pixels(torch.as_tensor(pts, device="cuda"), torch.as_tensor(radii), size)
    assert gpu.point.device.type == "cuda"
    for name in ("point", "x", "y", "offsets"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
    np.testing.assert_array_equal(gpu.dist2.cpu().numpy(), cpu.dist2.numpy())
    np.testing.assert_array_equal(label_map(gpu).cpu().numpy(), bf_label_map(pts, radii, size))
    cost, keep = tensor_of(cost_fn, cpu, torch.float32), tensor_of(keep_fn, cpu, torch.bool)
    assert torch.equal(
        label_map(gpu, cost=cost.cuda(), keep=keep.cuda()).cpu(),
        label_map(cpu, cost=cost, keep=keep),
    )
    empty = circle_pixels(torch.zeros(0, 2, device="cuda"), torch.zeros(0), size)
    assert len(empty) == 0 and not label_map(empty).any()


# --------------------------------------------------------------------------------------------
# inside_image, pixel_of, duplicate_mask
# --------------------------------------------------------------------------------------------


def test_inside_image():
    h, w = 6, 9
    pts = np.array(
        [
            [0.0, 0.0], [w, h], [w, 0.0], [0.0, h], [4.5, 3.5],  # corners, border, centre
            [-1e-9, 2.0], [w + 1e-9, 2.0], [2.0, -1e-9], [2.0, h + 1e-9],
            [np.nan, 2.0], [2.0, np.nan], [np.inf, 1.0], [-np.inf, 1.0],
        ]
    )  # fmt: skip
    expected = [True] * 5 + [False] * 8
    got = inside_image(pts, (h, w))
    assert got.dtype == bool
    assert got.tolist() == expected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", [*SIZES, *TINY_SIZES])
def test_inside_image_and_pixel_of_bruteforce(seed, size):
    h, w = size
    rng = np.random.default_rng(400 + seed)
    pts = random_points(rng, 80, size, margin=2.0)
    pts[::7] = np.round(pts[::7])  # integer coordinates: pixel corners, borders
    ins = inside_image(pts, size)
    pix = pixel_of(pts, size)
    assert pix.dtype == np.int64 and pix.shape == (80, 2)
    for (x, y), inside, (c, r) in zip(pts, ins, pix, strict=True):
        assert inside == (0 <= x <= w and 0 <= y <= h)
        assert c == min(max(math.floor(x), 0), w - 1)
        assert r == min(max(math.floor(y), 0), h - 1)
        if inside:  # the pixel's unit square contains the point (closed on the far border)
            assert c <= x <= c + 1 and r <= y <= r + 1


def test_pixel_of_hand_cases():
    size = (4, 5)
    pts = np.array([[0.0, 0.0], [5.0, 4.0], [2.5, 1.5], [2.0, 3.0], [4.999, 3.999], [-3.0, 9.0]])
    assert pixel_of(pts, size).tolist() == [[0, 0], [4, 3], [2, 1], [2, 3], [4, 3], [0, 3]]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 2, 30, 200])
def test_duplicate_mask_bruteforce(seed, n):
    rng = np.random.default_rng(500 + seed)
    pts = np.round(rng.uniform(0, 6, (n, 2)) * 2) / 2  # coarse grid: many repeats
    got = duplicate_mask(pts)
    ref = [
        any(pts[j][0] == pts[i][0] and pts[j][1] == pts[i][1] for j in range(i)) for i in range(n)
    ]
    assert got.dtype == bool and got.shape == (n,)
    assert got.tolist() == ref
    assert got.sum() == n - len({(float(x), float(y)) for x, y in pts})
    # include_first: every point whose position another point repeats
    got_all = duplicate_mask(pts, include_first=True)
    ref_all = [
        any(j != i and pts[j][0] == pts[i][0] and pts[j][1] == pts[i][1] for j in range(n))
        for i in range(n)
    ]
    assert got_all.dtype == bool and got_all.tolist() == ref_all


def test_duplicate_mask_hand_cases():
    assert duplicate_mask(np.zeros((0, 2))).tolist() == []
    assert duplicate_mask(np.array([[1.0, 2.0]])).tolist() == [False]
    assert duplicate_mask(np.tile([[1.0, 2.0]], (4, 1))).tolist() == [False, True, True, True]
    # the first occurrence stays False even when it sorts after its copies' neighbours
    pts = np.array([[5.0, 1.0], [0.0, 0.0], [5.0, 1.0], [1.0, 5.0], [0.0, 0.0], [5.0, 1.0]])
    assert duplicate_mask(pts).tolist() == [False, False, True, False, True, True]
    assert duplicate_mask(pts, include_first=True).tolist() == [True, True, True, False, True, True]
    assert duplicate_mask(np.zeros((0, 2)), include_first=True).tolist() == []
    # (x, y) and (y, x) are different points
    assert duplicate_mask(np.array([[1.0, 2.0], [2.0, 1.0]])).tolist() == [False, False]


def _distinct_pixels_reference(points, size):
    """Slow reference: every pixel of the image scanned for each point whose pixel an earlier
    point (or a first occurrence) holds; the free pixel in the nearest square ring (at most
    FREE_PIXEL_RING), nearest; none: the point stays."""
    h, w = size
    out = [list(map(float, p)) for p in points]
    cell = [(min(max(math.floor(x), 0), w - 1), min(max(math.floor(y), 0), h - 1)) for x, y in out]
    taken = set(cell)
    firsts = {c: i for i, c in reversed(list(enumerate(cell)))}
    for k, (col, row) in enumerate(cell):
        if firsts[(col, row)] == k:
            continue
        best = None
        for r in range(h):
            for c in range(w):
                if (c, r) in taken:
                    continue
                ring = max(abs(r - row), abs(c - col))
                if ring > FREE_PIXEL_RING:
                    continue
                key = (
                    ring,
                    float(np.float32((c + 0.5 - np.float32(out[k][0])) ** 2))
                    + float(np.float32((r + 0.5 - np.float32(out[k][1])) ** 2)),
                    r,
                    c,
                )
                best = key if best is None or key < best else best
        if best is not None:
            taken.add((best[3], best[2]))
            out[k] = [best[3] + 0.5, best[2] + 0.5]
    return np.array(out, dtype=np.float32).reshape(-1, 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("size", "n"), [((6, 7), 30), ((12, 9), 60), ((3, 3), 9), ((20, 20), 5)])
def test_distinct_pixels_bruteforce(seed, size, n):
    rng = np.random.default_rng(900 + seed)
    centre = np.array([size[1], size[0]]) / 2
    pts = (centre + rng.normal(0, 1.2, (n, 2))).astype(np.float32)  # clustered: many collisions
    got = distinct_pixels(pts, size)
    assert got.dtype == np.float32 and got.shape == (n, 2)
    np.testing.assert_allclose(got, _distinct_pixels_reference(pts, size), atol=1e-6)
    flat = pixel_of(got, size)
    if n <= 9:  # the whole image is within three rings of every pixel of a 3×3 image
        assert len({tuple(c) for c in flat.tolist()}) == n  # no two points in one pixel


def test_distinct_pixels_hand_cases():
    size = (10, 10)
    # the second point of pixel (4, 4) goes to the free neighbour nearest to it: (5, 4)
    pts = np.array([[4.2, 4.5], [4.9, 4.5], [1.0, 1.0]], np.float32)
    expected = np.array([[4.2, 4.5], [5.5, 4.5], [1, 1]], np.float32)
    np.testing.assert_array_equal(distinct_pixels(pts, size), expected)
    # a neighbour another point holds is not free: the next nearest is taken
    pts = np.array([[4.2, 4.5], [4.9, 4.5], [5.5, 4.5]], np.float32)
    np.testing.assert_array_equal(distinct_pixels(pts, size)[1], [4.5, 3.5])  # the row above
    untouched = np.array([[0.5, 0.5], [9.9, 9.9]], np.float32)
    np.testing.assert_array_equal(distinct_pixels(untouched, size), untouched)
    assert distinct_pixels(np.zeros((0, 2)), size).shape == (0, 2)
    crowded = np.full((5, 2), 0.5, np.float32)  # more points than the 2×2 image has pixels
    moved = distinct_pixels(crowded, (2, 2))
    np.testing.assert_array_equal(moved[:4], [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]])
    np.testing.assert_array_equal(moved[4], [0.5, 0.5])  # no free pixel left: it stays
    far = np.full((60, 2), 20.5, np.float32)  # 49 pixels within three rings: 11 stay
    placed = distinct_pixels(far, (40, 40))
    assert len({tuple(c) for c in pixel_of(placed, (40, 40)).tolist()}) == 49
    assert np.abs(placed - 20.5).max() <= 3.0


# --------------------------------------------------------------------------------------------
# scale / flip / translate
# --------------------------------------------------------------------------------------------

POINT_INPUTS = [
    ("numpy64", lambda a: np.asarray(a, dtype=np.float64)),
    ("numpy32", lambda a: np.asarray(a, dtype=np.float32)),
    ("torch32", lambda a: torch.as_tensor(a, dtype=torch.float32)),
    ("torch64", lambda a: torch.as_tensor(a, dtype=torch.float64)),
]


def to_np(a):
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.mark.parametrize(("kind", "make"), POINT_INPUTS, ids=[k for k, _ in POINT_INPUTS])
def test_point_transforms(kind, make):
    rng = np.random.default_rng(600)
    raw = rng.uniform(-5, 50, (25, 2))
    pts = make(raw)
    before = to_np(pts).copy()
    ref_pts = to_np(pts).astype(np.float64)  # the values actually stored in the input
    tol = 1e-5 if kind.endswith("32") else 1e-12

    def ok(out, expected):
        assert type(out) is type(pts)
        assert out.dtype == pts.dtype and tuple(out.shape) == tuple(pts.shape)
        expected = np.array([list(e) for e in expected])
        np.testing.assert_allclose(to_np(out), expected, rtol=tol, atol=tol)
        np.testing.assert_array_equal(to_np(pts), before)  # input untouched

    ok(scale_points(pts, 1.5), [(x * 1.5, y * 1.5) for x, y in ref_pts])
    ok(scale_points(pts, 0.5, 3.0), [(x * 0.5, y * 3.0) for x, y in ref_pts])
    ok(flip_points_horizontal(pts, 37), [(37 - x, y) for x, y in ref_pts])
    ok(translate_points(pts, -3.25, 7.5), [(x - 3.25, y + 7.5) for x, y in ref_pts])
    # round trips
    ok(flip_points_horizontal(flip_points_horizontal(pts, 37), 37), ref_pts)
    ok(scale_points(scale_points(pts, 0.8, 1.6), 1 / 0.8, 1 / 1.6), ref_pts)
    ok(translate_points(translate_points(pts, 4.5, -2.0), -4.5, 2.0), ref_pts)


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_point_transforms_integer_input(make):
    pts = make([[1, 2], [3, 4]])
    before = to_np(pts).copy()
    np.testing.assert_allclose(to_np(scale_points(pts, 1.5)), [[1.5, 3.0], [4.5, 6.0]])
    np.testing.assert_allclose(to_np(translate_points(pts, 0.5, -0.5)), [[1.5, 1.5], [3.5, 3.5]])
    np.testing.assert_allclose(to_np(flip_points_horizontal(pts, 10)), [[9, 2], [7, 4]])
    np.testing.assert_array_equal(to_np(pts), before)


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_point_transforms_zero_points(make):
    pts = make(np.zeros((0, 2)))
    for out in (
        scale_points(pts, 2.0),
        flip_points_horizontal(pts, 5),
        translate_points(pts, 1.0, 1.0),
    ):
        assert tuple(out.shape) == (0, 2)


# --------------------------------------------------------------------------------------------
# normalized_coords and the pixel-grid conventions under grid_sample / resize / flip / crop
# --------------------------------------------------------------------------------------------


def sample(img: torch.Tensor, pts: torch.Tensor, mode: str) -> torch.Tensor:
    """``img`` H×W sampled at ``N×2`` pixel points via grid_sample(align_corners=False)."""
    h, w = img.shape
    grid = normalized_coords(pts, (h, w)).reshape(1, 1, -1, 2)
    out = nnf.grid_sample(img[None, None], grid, mode=mode, align_corners=False)
    return out.reshape(-1)


def pixel_centres(h, w, dtype=torch.float64):
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([c.flatten() + 0.5, r.flatten() + 0.5], 1).to(dtype)


@pytest.mark.parametrize("size", [*SIZES, *TINY_SIZES])
def test_normalized_coords_pixel_centres(size):
    h, w = size
    img = torch.arange(h * w, dtype=torch.float64).reshape(h, w)
    pts = pixel_centres(h, w)
    g = normalized_coords(pts, size)
    assert g.dtype == pts.dtype and g.shape == pts.shape
    # nearest: exactly the pixel's own value (its index)
    assert torch.equal(sample(img, pts, "nearest"), img.flatten())
    # bilinear at a centre: the pixel's value (up to float64 rounding of the unnormalisation)
    torch.testing.assert_close(sample(img, pts, "bilinear"), img.flatten(), rtol=0, atol=1e-9)
    # float32 points too
    assert torch.equal(sample(img.float(), pts.float(), "nearest"), img.flatten().float())
    # formula (2x/W − 1, 2y/H − 1); the image corners are ±1
    corners = torch.tensor([[0.0, 0.0], [w, h]], dtype=torch.float64)
    assert normalized_coords(corners, size).tolist() == [[-1.0, -1.0], [1.0, 1.0]]


def test_normalized_coords_integer_input():
    got = normalized_coords(torch.tensor([[1, 2], [4, 0]]), (4, 8))
    assert got.is_floating_point()
    torch.testing.assert_close(got, torch.tensor([[-0.75, 0.0], [0.0, -1.0]]))


@pytest.mark.parametrize("size", SIZES)
def test_normalized_coords_subpixel_linear_ramp(size):
    """Bilinear sampling of an image whose pixel value is ``a·x + b·y`` at its centre returns
    ``a·x + b·y`` at any sub-pixel point between the outermost centres."""
    h, w = size
    centres = pixel_centres(h, w)
    img = (3.0 * centres[:, 0] - 2.0 * centres[:, 1]).reshape(h, w)
    rng = np.random.default_rng(700)
    pts = torch.as_tensor(
        np.column_stack([rng.uniform(0.5, w - 0.5, 200), rng.uniform(0.5, h - 0.5, 200)])
    )
    torch.testing.assert_close(
        sample(img, pts, "bilinear"), 3.0 * pts[:, 0] - 2.0 * pts[:, 1], rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("size", SIZES)
def test_flip_and_crop_conventions(size):
    h, w = size
    rng = np.random.default_rng(800)
    img = torch.as_tensor(rng.normal(size=(h, w)))
    pts = torch.as_tensor(np.column_stack([rng.uniform(0, w, 100), rng.uniform(0, h, 100)]))
    flipped = torch.flip(img, dims=[-1])
    fpts = flip_points_horizontal(pts, w)
    torch.testing.assert_close(
        sample(flipped, fpts, "bilinear"), sample(img, pts, "bilinear"), rtol=0, atol=1e-9
    )
    # pixel_of maps flipped points to the mirrored pixel (away from pixel borders)
    inner = (pts[:, 0] % 1 > 1e-6).numpy()
    pix, fpix = pixel_of(pts.numpy(), size), pixel_of(fpts.numpy(), size)
    np.testing.assert_array_equal(fpix[inner, 0], w - 1 - pix[inner, 0])
    np.testing.assert_array_equal(fpix[:, 1], pix[:, 1])
    # flipping the points twice is the identity (up to float64 rounding of W − (W − x))
    torch.testing.assert_close(flip_points_horizontal(fpts, w), pts, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        sample(torch.flip(flipped, dims=[-1]), flip_points_horizontal(fpts, w), "nearest"),
        sample(img, pts, "nearest"),
    )
    # crop at (left, top): the same pixel is found at x − left
    left, top = 3, 2
    crop = img[top:, left:]
    cpts = translate_points(pts, -left, -top)
    ok = inside_image(cpts.numpy(), tuple(crop.shape))
    cp, p = pixel_of(cpts.numpy()[ok], tuple(crop.shape)), pixel_of(pts.numpy()[ok], size)
    np.testing.assert_array_equal(crop.numpy()[cp[:, 1], cp[:, 0]], img.numpy()[p[:, 1], p[:, 0]])


@pytest.mark.parametrize("size", SIZES)
def test_scale_round_trip_through_grid_sample(size):
    h, w = size
    rng = np.random.default_rng(900)
    pts = torch.as_tensor(np.column_stack([rng.uniform(0, w, 50), rng.uniform(0, h, 50)]))
    s = 1.75
    back = scale_points(scale_points(pts, s), 1 / s)
    torch.testing.assert_close(back, pts, rtol=0, atol=1e-12)
    # normalised coordinates are invariant to a resize of image and points together
    big = (round(h * s), round(w * s))
    sx, sy = big[1] / w, big[0] / h
    torch.testing.assert_close(
        normalized_coords(scale_points(pts, sx, sy), big), normalized_coords(pts, size)
    )


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize(("size", "rc"), [((9, 14), (3, 10)), ((20, 7), (0, 6)), ((5, 5), (4, 0))])
def test_resize_2x_keeps_point_in_dot(mode, size, rc):
    """Draw a dot at pixel (r, c), resize the image 2× and the point with ``scale_points``: the
    point stays on the dot (at its maximum)."""
    h, w = size
    r, c = rc
    img = torch.zeros(1, 1, h, w, dtype=torch.float64)
    img[0, 0, r, c] = 1.0
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    big = nnf.interpolate(img, scale_factor=2, mode=mode, **kwargs)[0, 0]
    assert big.shape == (2 * h, 2 * w)
    rng = np.random.default_rng(1000)
    # the pixel centre, its corners' interior and random points inside pixel (r, c)
    inside = np.column_stack([c + rng.uniform(0.01, 0.99, 20), r + rng.uniform(0.01, 0.99, 20)])
    pts = np.vstack([[c + 0.5, r + 0.5], inside])
    # the dot becomes the 2×2 block of pixels [2c, 2c+1] × [2r, 2r+1]: under bilinear its
    # values are >= 0.75² (1 at the image border), everything else <= 0.25
    block = np.zeros((2 * h, 2 * w), dtype=bool)
    block[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = True
    assert big.numpy()[block].min() >= 0.5625 and big.numpy()[~block].max() <= 0.25
    if mode == "nearest":
        assert np.all(big.numpy()[block] == 1) and np.all(big.numpy()[~block] == 0)
    for make in (np.asarray, torch.as_tensor):
        spts = to_np(scale_points(make(pts), 2.0))
        pix = pixel_of(spts, (2 * h, 2 * w))
        assert np.all(block[pix[:, 1], pix[:, 0]])
    # the centre lands on the centre of the block, where sampling the resized image peaks
    centre = scale_points(torch.tensor([[c + 0.5, r + 0.5]], dtype=torch.float64), 2.0)
    assert centre.tolist() == [[2 * c + 1.0, 2 * r + 1.0]]
    peak = sample(big, centre, "bilinear")
    torch.testing.assert_close(peak, big[torch.as_tensor(block)].mean().reshape(1))
    for d in ([1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.6, -0.7]):
        assert sample(big, centre + torch.tensor([d], dtype=torch.float64), "bilinear") <= peak
    # and sampling the original at the original point gives the dot
    torch.testing.assert_close(
        sample(img[0, 0], torch.as_tensor(pts[:1]), "bilinear"), torch.ones(1, dtype=torch.float64)
    )


def test_label_map_infinite_costs_still_label_and_tie_to_the_lowest_index():
    pts = np.array([[5.0, 5.0], [6.0, 5.0]], dtype=np.float32)
    cp = circle_pixels(pts, np.array([3.0, 3.0]), (10, 12))
    lm = label_map(cp, cost=torch.full((len(cp),), float("inf"))).numpy()
    covered = np.zeros(10 * 12, dtype=bool)
    covered[cp.flat.numpy()] = True
    first = np.zeros(10 * 12, dtype=bool)
    first[cp.flat[cp.point == 0].numpy()] = True
    assert (lm.ravel() > 0).tolist() == covered.tolist()
    assert (lm.ravel()[first] == 1).all() and (lm.ravel()[covered & ~first] == 2).all()
