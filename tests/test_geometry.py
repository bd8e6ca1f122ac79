"""Tests of :mod:`xmask.geometry.circles` (circle pixels, label maps) against the slow,
slow, obvious references of ``geometry_refs``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry_refs import (
    F32,
    SEEDS,
    SIZES,
    TINY_SIZES,
    as_entries,
    bf_circles,
    bf_d2,
    bf_d2_fast,
    bf_label_map,
    check_csr,
    random_points,
)
from xmask.geometry.circles import circle_pixels, label_map, nnec_radii

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
