"""The superpixel annotation backend and the shared mask rules of :mod:`xmask.geometry.labels`.

Invariants are checked against brute-force references written here (pairwise NNEC radii,
per-pixel distances in float32 as :mod:`xmask.geometry` documents them, a per-pixel argmin for
the overlap rule); quality against the exact masks of synthetic crowds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xmask.annotate.superpixel import SuperpixelConfig, annotate_superpixel
from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd
from xmask.geometry.circles import disc_keep, head_circles
from xmask.geometry.labels import MaskResult, resolve_labels

F32 = np.float32


# --------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------


def brute_radii(points: np.ndarray, size: tuple[int, int], r_min: float = 3.0) -> np.ndarray:
    """NNEC radii, duplicates measured to the nearest point at a *different* position."""
    pts = points.astype(np.float64)
    r_max = 0.5 * min(size)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    d[d == 0] = np.inf
    nearest = d.min(axis=1) if len(pts) else np.zeros(0)
    nearest[~np.isfinite(nearest)] = r_max
    return np.minimum(np.maximum(nearest, r_min), r_max).astype(F32)


def brute_dist2(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``N×H×W float32`` squared distance from every pixel centre to every point."""
    h, w = size
    cx = np.arange(w, dtype=F32) + F32(0.5)
    cy = np.arange(h, dtype=F32) + F32(0.5)
    dx = cx[None, None, :] - points[:, 0, None, None].astype(F32)
    dy = cy[None, :, None] - points[:, 1, None, None].astype(F32)
    return dx * dx + dy * dy


def point_cells(points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixel holding each point (right/bottom border: last pixel)."""
    h, w = size
    col = np.minimum(np.floor(points[:, 0]).astype(np.int64), w - 1)
    row = np.minimum(np.floor(points[:, 1]).astype(np.int64), h - 1)
    return row, col


def check_invariants(result: MaskResult, points: np.ndarray, size: tuple[int, int]) -> None:
    """Labels in ``{0..N}``; no mask pixel outside its own NNEC circle; every head whose pixel
    holds no other point owns its point pixel."""
    labels, n = result.labels, len(points)
    assert labels.shape == size and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= n
    radii = brute_radii(points, size)
    np.testing.assert_allclose(result.radii, radii, rtol=1e-6)
    rows, cols = np.nonzero(labels)
    owner = labels[rows, cols] - 1
    dx = cols.astype(F32) + F32(0.5) - points[owner, 0].astype(F32)
    dy = rows.astype(F32) + F32(0.5) - points[owner, 1].astype(F32)
    assert np.all(dx * dx + dy * dy <= radii[owner] * radii[owner]), "mask pixel outside circle"
    row, col = point_cells(points, size)
    cell = row * size[1] + col
    alone = np.bincount(cell, minlength=size[0] * size[1])[cell] == 1
    np.testing.assert_array_equal(labels[row, col][alone], np.arange(1, n + 1)[alone])
    np.testing.assert_array_equal(result.shared, ~alone)
    np.testing.assert_array_equal(result.area, np.bincount(labels.ravel(), minlength=n + 1)[1:])


def mean_iou(pred: np.ndarray, truth: np.ndarray, n: int) -> float:
    """Mean over the true instances ``k`` of IoU(pred == k, truth == k)."""
    ious = []
    for k in range(1, n + 1):
        p, t = pred == k, truth == k
        ious.append((p & t).sum() / max((p | t).sum(), 1))
    return float(np.mean(ious))


# --------------------------------------------------------------------------------------------
# Shared rules (masks.py)
# --------------------------------------------------------------------------------------------


def brute_split(points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(allowed, seed)``, each ``N×H×W``: the co-located heads' split, one group at a time.

    Heads alone in their pixel may keep any pixel. The ``k`` heads of a shared pixel take the
    circle of the lowest index (its point pixel left out), list its pixels by angle around that
    point (ties row-major), and cut the list into ``k`` runs of equal count; the head of rank
    ``m`` may keep run ``m``, and if ``m >= 1`` is seeded with its nearest run pixel holding no
    point.
    """
    n, (h, w) = len(points), size
    radii = brute_radii(points, size)
    d2 = brute_dist2(points, size)
    row, col = point_cells(points, size)
    cell = row * w + col
    allowed = np.ones((n, h, w), bool)
    seed = np.zeros((n, h, w), bool)
    for pixel in np.unique(cell):
        group = [i for i in range(n) if cell[i] == pixel]
        if len(group) == 1:
            continue
        lead, k = group[0], len(group)
        listed = [
            (np.arctan2(y + 0.5 - float(points[lead, 1]), x + 0.5 - float(points[lead, 0])), y, x)
            for y in range(h)
            for x in range(w)
            if d2[lead, y, x] <= radii[lead] ** 2 and y * w + x != pixel
        ]
        listed.sort()
        for m, i in enumerate(group):
            allowed[i] = False
            run = [(y, x) for j, (_, y, x) in enumerate(listed) if j * k // len(listed) == m]
            for y, x in run:
                allowed[i, y, x] = d2[i, y, x] <= radii[i] ** 2
            free = [
                (d2[i, y, x], y, x) for y, x in run if allowed[i, y, x] and y * w + x not in cell
            ]
            if m >= 1 and free:
                _, y, x = min(free)
                seed[i, y, x] = True
    return allowed, seed


def brute_resolve(points: np.ndarray, size: tuple[int, int], keep: np.ndarray) -> np.ndarray:
    """The documented rule per pixel: point pixels to the lowest index of their points, then
    seeds of co-located heads; other pixels to the kept (and allowed) head of lowest ``d²/r²``
    (float32), ties to the lowest index."""
    n = len(points)
    radii = brute_radii(points, size)
    d2 = brute_dist2(points, size)
    cost = d2 / (radii * radii)[:, None, None]
    split_allowed, seed = brute_split(points, size)
    allowed = (keep & split_allowed | seed) & (d2 <= (radii * radii)[:, None, None])
    cost[seed] = -0.5
    row, col = point_cells(points, size)
    for i in range(n):
        allowed[i, row[i], col[i]] = True
        cost[i, row[i], col[i]] = -1.0
    cost = np.where(allowed, cost, np.inf)
    winner = np.argmin(cost, axis=0)  # first minimum = lowest index
    return np.where(np.isfinite(cost.min(axis=0)), winner + 1, 0).astype(np.int32)


def keep_from_maps(points: np.ndarray, size: tuple[int, int], maps: np.ndarray) -> np.ndarray:
    """Per-head ``N×H×W`` candidate maps sampled at the circle pixels (the backend interface)."""
    circles = head_circles(points, size)
    px = circles.pixels
    return maps[px.point.numpy(), px.y.numpy(), px.x.numpy()]


OVERLAP = np.array([[10.3, 10.5], [16.1, 10.5], [16.1, 14.5], [4.0, 21.0]], dtype=F32)


def test_overlap_goes_to_lowest_normalised_distance() -> None:
    size = (26, 24)
    radii = brute_radii(OVERLAP, size)
    assert radii[0] > radii[1]  # a big circle overlapping two small ones
    d2 = brute_dist2(OVERLAP, size)
    inside = d2 <= (radii * radii)[:, None, None]
    assert (inside.sum(axis=0) >= 2).sum() > 20  # the circles do overlap
    rng = np.random.default_rng(0)
    for maps in (np.ones((4, *size), bool), rng.random((4, *size)) < 0.6):
        circles = head_circles(OVERLAP, size)
        result = resolve_labels(circles, keep_from_maps(OVERLAP, size, maps))
        np.testing.assert_array_equal(result.labels, brute_resolve(OVERLAP, size, maps))
        check_invariants(result, OVERLAP, size)


def test_empty_candidates_still_own_their_point_pixel() -> None:
    size = (26, 24)
    circles = head_circles(OVERLAP, size)
    result = resolve_labels(circles, np.zeros(len(circles.pixels), bool))
    assert result.forced.all() and (result.area == 1).all()
    check_invariants(result, OVERLAP, size)


def test_keep_must_cover_the_circle_pixels() -> None:
    circles = head_circles(OVERLAP, (26, 24))
    with pytest.raises(ValueError, match="circle pixels"):
        resolve_labels(circles, np.ones(3, bool))


@pytest.mark.parametrize("bad", [[[1.0, np.nan]], [[-0.5, 2.0]], [[2.0, 26.5]]])
def test_bad_points_rejected(bad: list[list[float]]) -> None:
    image = np.zeros((26, 24, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        annotate_superpixel(image, np.array(bad, F32))


def test_bad_image_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        annotate_superpixel(np.zeros((8, 8), np.uint8), np.zeros((0, 2), F32))


# --------------------------------------------------------------------------------------------
# Superpixel backend
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crowds() -> list:
    return [
        make_crowd(160, 192, 25, seed=21),
        make_crowd(192, 256, 200, seed=22, perspective=True),
        make_crowd(256, 256, 700, seed=23, perspective=True),
    ]


def test_invariants_on_synthetic_crowds(crowds: list) -> None:
    for sample in crowds:
        result = annotate_superpixel(sample.image, sample.points)
        check_invariants(result, sample.points, sample.size)
        assert result.empty == 0 and not result.shared.any()


def test_better_than_plain_discs(crowds: list) -> None:
    for sample in crowds:
        n = len(sample.points)
        ours = mean_iou(annotate_superpixel(sample.image, sample.points).labels, sample.labels, n)
        circles = head_circles(sample.points, sample.size)
        disc = mean_iou(resolve_labels(circles, disc_keep(circles, 0.5)).labels, sample.labels, n)
        full = resolve_labels(circles, np.ones(len(circles.pixels), bool)).labels
        assert ours > disc + 0.1, (ours, disc)
        assert disc > mean_iou(full, sample.labels, n)


def test_zero_points() -> None:
    image = make_crowd(40, 50, 0, seed=1).image
    result = annotate_superpixel(image, np.zeros((0, 2), F32))
    assert result.labels.shape == (40, 50) and not result.labels.any()
    assert result.area.shape == (0,) and result.empty == 0


def test_one_point() -> None:
    sample = make_crowd(64, 80, 1, seed=2)
    result = annotate_superpixel(sample.image, sample.points)
    check_invariants(result, sample.points, sample.size)
    assert result.radii[0] == 32.0 and result.area[0] > 1


def test_duplicates_split_the_circle_and_all_get_a_mask() -> None:
    sample = make_crowd(96, 96, 12, seed=3)
    points = np.concatenate([sample.points, sample.points[[4, 4, 7]]])  # copies 12, 13 of 4
    result = annotate_superpixel(sample.image, points)
    check_invariants(result, points, sample.size)
    assert result.radii[12] == result.radii[4] > 3.0  # policy "distinct": full circle
    assert result.shared[[4, 7, 12, 13, 14]].all() and result.shared.sum() == 5
    assert result.empty == 0
    alone = np.full((3, 2), 20.5, F32)  # three copies, nothing else: thirds of the circle
    circles = head_circles(alone, (41, 41))
    full = resolve_labels(circles, np.ones(len(circles.pixels), bool))
    # one shared circle, each pixel held once, not three copies (issue 27, item 8)
    assert full.area.sum() == len(circles.pixels) and full.area.max() - full.area.min() <= 2


COLOCATED = np.array(
    [
        [10.2, 10.3],
        [10.2, 10.3],
        [10.7, 10.9],
        [16.0, 12.0],
        [16.3, 12.2],
        [4.0, 4.0],
        [16.5, 12.5],
        [10.2, 10.3],
        [12.5, 10.5],
    ],
    dtype=F32,
)


def test_colocated_heads_split_as_documented() -> None:
    size = (24, 26)
    rng = np.random.default_rng(1)
    circles = head_circles(COLOCATED, size)
    for maps in (
        np.ones((9, *size), bool),
        rng.random((9, *size)) < 0.7,
        np.zeros((9, *size), bool),
    ):
        result = resolve_labels(circles, keep_from_maps(COLOCATED, size, maps))
        np.testing.assert_array_equal(result.labels, brute_resolve(COLOCATED, size, maps))
        check_invariants(result, COLOCATED, size)
        assert result.empty == 0
    np.testing.assert_array_equal(np.flatnonzero(result.shared), [0, 1, 2, 3, 4, 6, 7])


def test_points_on_the_border() -> None:
    sample = make_crowd(60, 70, 10, seed=4)
    h, w = sample.size
    border = np.array([[0, 0], [w, h], [w, 20.5], [33.3, 0], [0, h], [w - 0.5, h - 0.5]], F32)
    points = np.concatenate([sample.points, border])
    result = annotate_superpixel(sample.image, points)
    check_invariants(result, points, sample.size)


def test_greyscale_and_flat_images() -> None:
    sample = make_crowd(128, 160, 60, seed=5)
    grey = np.repeat(sample.image.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    result = annotate_superpixel(grey, sample.points)
    check_invariants(result, sample.points, sample.size)
    assert mean_iou(result.labels, sample.labels, 60) > 0.7

    flat = np.full_like(sample.image, 128)  # no edge anywhere: every head falls back
    result = annotate_superpixel(flat, sample.points)
    assert result.fallback.all()
    circles = head_circles(sample.points, sample.size)
    disc = resolve_labels(circles, disc_keep(circles, SuperpixelConfig().fallback_radius))
    np.testing.assert_array_equal(result.labels, disc.labels)


def test_real_shanghaitech_image(shanghaitech: Path) -> None:
    dataset = open_dataset("sha", shanghaitech, "test")
    sample = dataset[dataset.names.index("IMG_1.jpg")]
    result = annotate_superpixel(sample.image, sample.points)
    check_invariants(result, sample.points, sample.size)
    pts = sample.points.astype(np.float64)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.diag(np.full(len(pts), np.inf))
    alone = d.min(axis=1) > 1.0  # the criterion: no other point within 1 px
    assert (result.area[alone] > 0).all()


def test_large_images_are_annotated_window_by_window() -> None:
    """Issue 27, item 8: memory bounded by a window, not the image (benchmarks/annotate_memory)."""
    sample = make_crowd(300, 420, 150, seed=5)
    whole = annotate_superpixel(sample.image, sample.points)
    windowed = annotate_superpixel(sample.image, sample.points, window=128)
    check_invariants(windowed, sample.points, sample.size)
    np.testing.assert_array_equal(windowed.radii, whole.radii)
    assert (windowed.labels == whole.labels).mean() > 0.9  # superpixels differ near seams only
    assert windowed.empty == 0
    at_once = annotate_superpixel(sample.image, sample.points, window=1024)
    np.testing.assert_array_equal(at_once.labels, whole.labels)
