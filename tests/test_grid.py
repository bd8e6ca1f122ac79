"""Masks on a coarser grid (:mod:`xmask.segment.grid`): the windows at any embedding stride equal
the whole image, the grid result is the small image's segmentation repeated, and every mask is
one 4-connected region holding its point."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import tiny_model
from xmask.cli._args import MASK_GRIDS
from xmask.errors import UsageError
from xmask.geometry.labels import connected_masks
from xmask.geometry.points import distinct_pixels, pixel_of
from xmask.inference.predictor import Predictor
from xmask.segment.grid import GRIDS, grid_config, repeat_and_mend, segment_on_grid
from xmask.segment.instances import (
    INFERENCE,
    Instances,
    SegmentConfig,
    segment_instances,
    smoothed_for_segmentation,
)
from xmask.segment.windows import TableBuffer, segment_in_windows


def _scene(height: int, width: int, heads: int, seed: int, stride: int = 4):
    """A random stride-``stride`` embedding of an image of ``(height, width)`` and head points
    with duplicates, near neighbours and border points."""
    gen = torch.Generator().manual_seed(seed)
    shape = (16, math.ceil(height / stride), math.ceil(width / stride))
    cells = torch.randn(*shape, generator=gen) * 0.3
    rng = np.random.default_rng(seed)
    pts = rng.uniform((0, 0), (width, height), size=(heads, 2)).astype(np.float32)
    near = pts[:6] + rng.uniform(-1.5, 1.5, size=(6, 2)).astype(np.float32)
    pts = np.concatenate([pts, pts[:4], near, [[width, height], [0.0, 0.0], [width, 7.5]]])
    return cells, np.clip(pts, 0, (width, height)).astype(np.float32)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("size", "heads", "core"), [((75, 105), 60, 16), ((64, 50), 25, 24)])
def test_windows_at_any_stride_equal_the_whole_image(
    stride: int, size: tuple[int, int], heads: int, core: int
) -> None:
    cells, pts = _scene(*size, heads, seed=heads + stride, stride=stride)
    cfg = grid_config(INFERENCE, 4 // stride)
    table = smoothed_for_segmentation(cells, size, cfg, stride=stride)
    whole = segment_instances(table, pts, None, cfg)
    buffer = TableBuffer()
    buffer.view((*size, 16), torch.float32).fill(np.nan)  # a read outside Ẽ's pixels would show
    tiled = segment_in_windows(cells, size, pts, None, cfg, core, buffer, stride)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_array_equal(tiled.area, whole.area)


def test_grid_config_scales_the_lengths() -> None:
    cfg = SegmentConfig(lam=1.6, tau_g=1.1, kernel=7, sigma=3.0, r_min=3.0, connected=False)
    assert grid_config(cfg, 1) == SegmentConfig(1.6, 1.1, 7, 3.0, r_min=3.0)
    assert grid_config(cfg, 2) == SegmentConfig(1.6, 1.1, 5, 1.5, r_min=1.5)
    assert grid_config(cfg, 4) == SegmentConfig(1.6, 1.1, 3, 0.75, r_min=0.75)


def _is_one_region_holding(labels: np.ndarray, k: int, pixel: np.ndarray) -> bool:
    pieces, count = ndimage.label(labels == k)  # 4-connected
    return count == 1 and pieces[pixel[1], pixel[0]] == 1


@pytest.mark.parametrize("grid", [2, 4])
@pytest.mark.parametrize(("size", "heads", "seed"), [((90, 130), 80, 0), ((61, 47), 40, 1)])
def test_grid_masks_are_the_small_images_repeated_and_coherent(
    grid: int, size: tuple[int, int], heads: int, seed: int, kernel_path: str
) -> None:
    cells, pts = _scene(*size, heads, seed)
    labels, areas = segment_on_grid(cells, size, pts, INFERENCE, grid, core=32)
    assert labels.shape == size and labels.dtype == np.int32
    np.testing.assert_array_equal(areas, np.bincount(labels.ravel(), minlength=len(pts) + 1)[1:])
    # away from the heads whose point pixel went to another head, the small image repeated
    small = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
    limit = np.array([small[1], small[0]], np.float32)
    on_grid = distinct_pixels(np.minimum(pts / grid, limit), small)
    cfg = grid_config(INFERENCE, grid)
    table = smoothed_for_segmentation(cells, small, cfg, stride=4 // grid)
    reference = segment_instances(table, on_grid, None, cfg).labels
    repeated = np.kron(reference, np.ones((grid, grid), dtype=np.int32))[: size[0], : size[1]]
    cell = pixel_of(pts, size)
    moved = np.flatnonzero(repeated[cell[:, 1], cell[:, 0]] != np.arange(1, len(pts) + 1))
    touched = np.isin(repeated, moved + 1) | np.isin(labels, moved + 1)
    for k in moved:  # their point pixels, taken from another head
        touched[cell[k, 1], cell[k, 0]] = True
    assert len(moved) > 0  # the scene has heads sharing a block: the give-back path runs
    given_back = repeated.copy()  # mended on the whole image, every head looked at
    order = np.arange(len(pts))[::-1]
    given_back[cell[order, 1], cell[order, 0]] = order + 1
    whole, whole_areas = connected_masks(given_back, pts)
    np.testing.assert_array_equal(labels, whole)
    np.testing.assert_array_equal(areas, whole_areas)
    np.testing.assert_array_equal(labels[~touched], repeated[~touched])
    first = np.unique(cell, axis=0, return_index=True)[1]
    for k in range(len(pts)):
        if k in first:  # one region holding its point
            assert _is_one_region_holding(labels, k + 1, cell[k]), k
        elif areas[k]:  # a later head of a shared pixel: one region, as at full resolution
            assert ndimage.label(labels == k + 1)[1] == 1, k


def test_a_bad_grid_is_refused() -> None:
    cells, pts = _scene(40, 40, 8, seed=3)
    with pytest.raises(ValueError, match="grid must be one of"):
        segment_on_grid(cells, (40, 40), pts, INFERENCE, 3)
    with pytest.raises(UsageError, match="mask grid must be one of"):
        Predictor(tiny_model(), "cpu", mask_grid=8)
    assert GRIDS == MASK_GRIDS  # the CLI's spelling


def test_the_predictor_counts_alike_and_masks_on_the_grid() -> None:
    image = (np.random.default_rng(0).random((100, 124, 3)) * 255).astype(np.uint8)
    scores = np.sort(Predictor(tiny_model(), "cpu", count_threshold=-50.0)(image).scores)
    threshold = float(np.log(scores[-30] / (1.0 - scores[-30])))  # the 30 highest cells or so
    full = Predictor(tiny_model(), "cpu", count_threshold=threshold)(image)
    coarse = Predictor(tiny_model(), "cpu", count_threshold=threshold, mask_grid=4)(image)
    assert coarse.count == full.count > 0
    np.testing.assert_array_equal(coarse.points, full.points)
    assert coarse.labels.shape == full.labels.shape == (100, 124)
    cell = pixel_of(coarse.points, (100, 124))
    for k in range(coarse.count):
        assert _is_one_region_holding(coarse.labels, k + 1, cell[k]), k
    assert not np.array_equal(coarse.labels, full.labels)


def test_predict_takes_a_mask_grid(tmp_path) -> None:
    """``xmask predict --mask-grid``: another grid redoes an image, the same one resumes."""
    import json

    from PIL import Image

    from xmask.cli import main

    image = tmp_path / "crowd.png"
    pixels = (np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "out"
    base = ["predict", str(image), "--out", str(out), "--device", "cpu", "--backend", "torch"]
    for grid, redone in (("4", 1), ("2", 1), ("2", 0), ("1", 1)):
        assert main([*base, "--mask-grid", grid]) == 0
        assert json.loads((out / "summary.json").read_text())["predicted"] == redone, grid


def _mended_on_the_whole_image(small: np.ndarray, grid: int, size, pts: np.ndarray):
    """The slow reference of :func:`repeat_and_mend`: repeat, give every point pixel back, then
    look at every head of the whole image."""
    labels = np.kron(small, np.ones((grid, grid), dtype=np.int32))[: size[0], : size[1]]
    cell = pixel_of(pts, size)
    order = np.arange(len(pts))[::-1]
    labels[cell[order, 1], cell[order, 0]] = order + 1
    return connected_masks(labels, pts)


def _on_grid(small: np.ndarray, on_grid: np.ndarray) -> Instances:
    """``small`` as the segmentation of heads at ``on_grid``, each circle just holding its
    region."""
    rows, cols = np.indices(small.shape)
    radii = [
        np.hypot(cols[small == k] + 0.5 - x, rows[small == k] + 0.5 - y).max()
        for k, (x, y) in enumerate(on_grid, start=1)
    ]
    n = len(on_grid)
    ones = np.ones(n, np.float32)
    area = np.bincount(small.ravel(), minlength=n + 1)[1:]
    return Instances(small, on_grid, ones, np.float32(radii), area, np.zeros(n, bool))


def test_mending_reaches_a_hole_beyond_the_broken_heads(kernel_path: str) -> None:
    # A (1) has its point in C's (3) block, so its own block is dropped; the background next
    # to it, enclosed by A and B (2) before, is then enclosed by B alone and becomes B's, out to
    # columns no box of A or C reaches
    small = np.array(
        [
            [2, 2, 2, 2, 2, 2, 2, 2],
            [2, 1, 0, 0, 0, 0, 0, 2],
            [2, 2, 2, 2, 2, 2, 2, 2],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [3, 3, 0, 0, 0, 0, 0, 0],
            [3, 3, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.int32,
    )
    grid, size = 2, (12, 15)
    on_grid = np.array([[1.5, 1.5], [0.5, 0.5], [0.5, 4.5]], dtype=np.float32)
    pts = np.array([[1.5, 9.5], [0.5, 0.5], [0.5, 10.5]], dtype=np.float32)
    labels, areas = repeat_and_mend(_on_grid(small, on_grid), grid, size, pts)
    whole, whole_areas = _mended_on_the_whole_image(small, grid, size, pts)
    np.testing.assert_array_equal(labels, whole)
    np.testing.assert_array_equal(areas, whole_areas)
    assert labels[3, 12] == 2 and labels[2, 2] == 2  # the hole and A's block went to B
    assert labels[9, 1] == 1 and areas[0] == 1


@pytest.mark.parametrize("seed", range(6))
def test_mending_in_a_crop_equals_the_whole_image(seed: int, kernel_path: str) -> None:
    # random grid maps (each head one region holding its grid pixel) and points that share blocks
    rng = np.random.default_rng(seed)
    grid = (2, 4)[seed % 2]
    cells, pts = _scene(60, 84, 50, seed)
    small_size = (math.ceil(60 / grid), math.ceil(84 / grid))
    limit = np.array([small_size[1], small_size[0]], np.float32)
    on_grid = distinct_pixels(np.minimum(pts / grid, limit), small_size)
    cfg = replace(grid_config(INFERENCE, grid), tau_g=float(rng.uniform(0.5, 3.0)))
    table = smoothed_for_segmentation(cells, small_size, cfg, stride=4 // grid)
    small = segment_instances(table, on_grid, None, cfg)
    labels, areas = repeat_and_mend(small, grid, (60, 84), pts)
    whole, whole_areas = _mended_on_the_whole_image(small.labels, grid, (60, 84), pts)
    np.testing.assert_array_equal(labels, whole)
    np.testing.assert_array_equal(areas, whole_areas)
