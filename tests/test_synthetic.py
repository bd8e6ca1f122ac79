"""Synthetic crowds: exact points and label maps, density control, reproducibility, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmask.data.points_io import read_txt_points
from xmask.data.readers import open_dataset
from xmask.data.synthetic import auto_radius_range, make_crowd, make_crowd_folder
from xmask.geometry.points import inside_image, pixel_of


def _check_labels(sample_labels: np.ndarray, points: np.ndarray) -> None:
    """Label at each point's pixel = its 1-based id; ids are exactly {0} ∪ {1..N}."""
    n = len(points)
    assert sample_labels.dtype == np.int32
    idx = pixel_of(points, sample_labels.shape)
    np.testing.assert_array_equal(sample_labels[idx[:, 1], idx[:, 0]], np.arange(1, n + 1))
    ids = np.unique(sample_labels)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))


@pytest.mark.parametrize(
    ("n_heads", "kwargs"),
    [
        (0, {}),
        (1, {}),
        (60, {"radius_range": (3.0, 9.0)}),
        (400, {}),
        (400, {"perspective": True}),
        (1500, {"perspective": True, "background": "flat"}),
        (30, {"radius_range": (14.0, 20.0), "min_visible": 0.0}),
    ],
)
def test_labels_match_points_exactly(n_heads: int, kwargs: dict) -> None:
    sample = make_crowd(192, 256, n_heads, seed=7, **kwargs)
    assert sample.image.shape == (192, 256, 3)
    assert sample.image.dtype == np.uint8
    assert sample.points.shape == (n_heads, 2)
    assert sample.points.dtype == np.float32
    assert sample.count == n_heads
    assert inside_image(sample.points, sample.size).all()
    assert sample.labels is not None
    _check_labels(sample.labels, sample.points)
    assert (sample.labels == 0).any(), "background must be present"


def test_heads_occlude_each_other_in_dense_crowds() -> None:
    sample = make_crowd(128, 128, 120, radius_range=(6.0, 9.0), seed=1)
    assert sample.labels is not None
    visible = np.bincount(sample.labels.ravel(), minlength=121)[1:]
    full = np.pi * 6.0 * 6.0 * 0.85  # smallest possible full ellipse area
    assert (visible < 0.8 * full).any(), "expected some heads partly hidden by heads in front"


def test_points_are_sub_pixel_on_a_hundredth_grid() -> None:
    sample = make_crowd(128, 160, 50, seed=3)
    frac = sample.points - np.floor(sample.points)
    assert len(np.unique(np.round(frac, 2))) > 10
    on_grid = np.round(sample.points.astype(np.float64), 2).astype(np.float32)
    np.testing.assert_array_equal(on_grid, sample.points)


def test_reproducible_with_seed() -> None:
    a = make_crowd(96, 128, 40, seed=11, perspective=True)
    b = make_crowd(96, 128, 40, seed=11, perspective=True)
    c = make_crowd(96, 128, 40, seed=12, perspective=True)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.points, c.points)


def test_generator_is_accepted_and_advances() -> None:
    rng = np.random.default_rng(5)
    a = make_crowd(64, 64, 10, seed=rng)
    b = make_crowd(64, 64, 10, seed=rng)
    assert not np.array_equal(a.points, b.points)


def test_density_and_perspective() -> None:
    sparse = make_crowd(256, 256, 20, seed=0)
    dense = make_crowd(256, 256, 800, seed=0)
    assert (sparse.count, dense.count) == (20, 800)
    lo, hi = auto_radius_range((256, 256), 800)
    assert hi < auto_radius_range((256, 256), 20)[0], "denser crowds get smaller heads"
    assert 1.0 <= lo < hi

    persp = make_crowd(256, 256, 800, radius_range=(2.0, 8.0), perspective=True, seed=0)
    y = persp.points[:, 1]
    assert (y < 128).sum() > 1.5 * (y >= 128).sum(), "far (top) half must be denser"
    assert persp.labels is not None
    area = np.bincount(persp.labels.ravel(), minlength=801)[1:]
    top, bottom = area[y < 64], area[y >= 192]
    assert np.median(bottom) > 3 * np.median(top), "near (bottom) heads must be larger"


def test_background_is_textured() -> None:
    sample = make_crowd(128, 128, 0, seed=2, background="texture")
    flat = make_crowd(128, 128, 0, seed=2, background="flat")
    assert (
        sample.image.astype(float).std(axis=(0, 1)).mean()
        > 3 * flat.image.astype(float).std(axis=(0, 1)).mean()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_heads": -1},
        {"radius_range": (0.5, 2.0)},
        {"radius_range": (5.0, 4.0)},
        {"background": "plaid"},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    args = {"n_heads": 5, **kwargs}
    with pytest.raises(ValueError):
        make_crowd(32, 32, seed=0, **args)


def test_too_dense_raises() -> None:
    with pytest.raises(ValueError, match="could not place"):
        make_crowd(32, 32, 200, radius_range=(12.0, 14.0), seed=0)


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_folder_round_trip(tmp_path: Path, image_format: str) -> None:
    paths = make_crowd_folder(
        tmp_path, 3, height=80, width=96, n_heads=(5, 30), seed=4, image_format=image_format
    )
    assert [p.name for p in paths] == [f"syn_{i:04d}.{image_format}" for i in range(3)]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temp files left"
    again_paths = make_crowd_folder(
        tmp_path / "again", 3, height=80, width=96, n_heads=(5, 30), seed=4
    )
    for path, again in zip(paths, again_paths, strict=True):
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape == (80, 96, 3)
        points = read_txt_points(path.with_suffix(".txt"))
        labels = np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}.png"))
        assert labels.dtype == np.uint16
        _check_labels(labels.astype(np.int32), points)
        assert 5 <= len(points) <= 30
        np.testing.assert_array_equal(points, read_txt_points(again.with_suffix(".txt")))
        if image_format == "png":
            np.testing.assert_array_equal(image, np.asarray(Image.open(again).convert("RGB")))


def test_folder_points_are_exact(tmp_path: Path) -> None:
    (path,) = make_crowd_folder(tmp_path, 1, height=80, width=96, n_heads=25, seed=9)
    # Rebuild the same sample: image i uses the i-th child of SeedSequence(seed), which first
    # draws the head count, then the crowd.
    rng = np.random.default_rng(np.random.SeedSequence(9).spawn(1)[0])
    sample = make_crowd(80, 96, int(rng.integers(25, 26)), seed=rng)
    text = path.with_suffix(".txt").read_text().splitlines()
    assert len(text) == 25
    assert all(len(line.split()) == 2 for line in text)
    written = read_txt_points(path.with_suffix(".txt")).astype(np.float32)
    np.testing.assert_array_equal(written, sample.points)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), sample.image)


def test_folder_reader_reads_it(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path, 2, height=64, width=80, n_heads=12, seed=1, masks=True)
    dataset = open_dataset("folder", tmp_path)
    assert len(dataset) == 2
    for sample in dataset:
        assert sample.count == 12
        assert sample.labels is not None
        _check_labels(sample.labels, sample.points)


def test_folder_without_masks(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path, 1, height=48, width=48, n_heads=4, seed=0, masks=False)
    assert not (tmp_path / "masks").exists()
    assert len(list(tmp_path.glob("*.txt"))) == 1
