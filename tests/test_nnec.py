"""Tests of :func:`xmask.geometry.circles.nnec_radii` (Eq. 1, 6: the NNEC radius) against the
pairwise brute force of ``geometry_refs``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry_refs import (
    SEEDS,
    SIZES,
    TINY_SIZES,
    bf_nnec,
    random_points,
)
from xmask.geometry.circles import nnec_radii

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
