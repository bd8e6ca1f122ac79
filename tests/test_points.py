"""Tests of :mod:`xmask.geometry.points` (pixels of points, duplicates, distinct pixels, point
transforms and the pixel-grid conventions) against slow, obvious references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from geometry_refs import (
    SEEDS,
    SIZES,
    TINY_SIZES,
    random_points,
)
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

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
