"""Masks a person would accept: one connected region per head holding its point, holes filled
(:func:`xmask.geometry.labels.connected_masks`), and circles bounded by the head's size
(:func:`xmask.geometry.circles.head_sizes`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from xmask.geometry.circles import head_sizes, nnec_radii
from xmask.geometry.labels import connected_masks
from xmask.geometry.points import pixel_of

FOUR = ndimage.generate_binary_structure(2, 1)


def literal_connected(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Head by head with SciPy: the 4-connected piece under the point (else the largest), then
    background regions enclosed by that head alone (and not at the border) filled."""
    out = np.zeros_like(labels)
    cells = pixel_of(points, labels.shape)
    for k in range(1, len(points) + 1):
        pieces, count = ndimage.label(labels == k, structure=FOUR)
        if count == 0:
            continue
        col, row = cells[k - 1]
        piece = pieces[row, col]
        if piece == 0:
            piece = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
        out[pieces == piece] = k
    holes, count = ndimage.label(out == 0, structure=FOUR)
    for h in range(1, count + 1):
        region = holes == h
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        ring = ndimage.binary_dilation(region, structure=FOUR) & ~region
        around = np.unique(out[ring])
        if len(around) == 1 and around[0] > 0:
            out[region] = around[0]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_connected_masks_match_the_head_by_head_reference(seed: int, kernel_path: str) -> None:
    rng = np.random.default_rng(seed)
    size = (24, 30)
    n = int(rng.integers(1, 7))
    points = rng.uniform((0, 0), (30, 24), (n, 2)).astype(np.float32)
    labels = rng.integers(0, n + 1, size).astype(np.int32)
    labels = ndimage.median_filter(labels, size=3)  # blobs with speckles and holes
    cells = pixel_of(points, size)
    for k in range(n):  # as the segmentation does: every point pixel is its head's
        labels[cells[k, 1], cells[k, 0]] = k + 1
    got, areas = connected_masks(labels, points)
    np.testing.assert_array_equal(got, literal_connected(labels, points))
    np.testing.assert_array_equal(areas, np.bincount(got.ravel(), minlength=n + 1)[1:])
    kept = (got > 0) & (labels > 0) & (got != labels)
    assert not kept.any() or (ndimage.label(got > 0, structure=FOUR)[1] > 0)  # filled holes only
    for k in range(1, n + 1):
        _, count = ndimage.label(got == k, structure=FOUR)
        assert count == 1 and got[cells[k - 1, 1], cells[k - 1, 0]] == k


def test_head_sizes_follow_the_perspective() -> None:
    rows = []
    for y, spacing in ((20.0, 8.0), (60.0, 12.0), (100.0, 16.0), (140.0, 20.0)):
        rows += [[x, y] for x in np.arange(5.0, 300.0, spacing)]
    points = np.array(rows, np.float32)
    sizes = head_sizes(points, (160, 310), bands=4)
    for y, spacing in ((20.0, 8.0), (140.0, 20.0)):
        assert np.allclose(sizes[points[:, 1] == y], spacing, rtol=0.15)
    lone = np.vstack([points, [[150.0, 380.0]]]).astype(np.float32)  # alone, near the camera
    radii = nnec_radii(lone, (400, 310), duplicates="distinct", size_prior=1.0)
    assert radii[-1] <= 2 * 20.0  # the perspective's size there, at most twice the largest
    assert nnec_radii(lone, (400, 310), duplicates="distinct")[-1] > 150.0  # Eq. 1 alone
    assert np.isinf(head_sizes(np.array([[3.0, 4.0], [3.0, 4.0]]), (10, 10))).all()


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "shared/data/shanghaitech/part_B").is_dir(),
    reason="needs ShanghaiTech B in ../shared/data",
)
def test_the_shipped_model_gives_one_region_per_head_on_shb_img_1() -> None:
    from xmask.inference.predictor import Predictor

    image = Path(__file__).resolve().parents[2] / "shared/data/shanghaitech/part_B"
    prediction = Predictor.load(device="cpu")(image / "test_data/images/IMG_1.jpg")
    assert prediction.labels is not None and prediction.count > 10
    cells = pixel_of(prediction.points, prediction.size)
    for k in range(1, prediction.count + 1):
        _, pieces = ndimage.label(prediction.labels == k, structure=FOUR)
        assert pieces == 1, k
        assert prediction.labels[cells[k - 1, 1], cells[k - 1, 0]] == k
