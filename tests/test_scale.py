"""Scale-adaptive inference: the same scene gives the same count at any resolution, dense tiny
heads get an enlarged pass, and points and masks come back in the image's own pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf

from conftest import tiny_model
from xmask.cli._args import SCALE_CHOICES
from xmask.data.synthetic import make_crowd
from xmask.geometry.points import pixel_of
from xmask.inference.count_rule import CountRule
from xmask.inference.predictor import Predictor
from xmask.inference.scale import (
    ONE_PASS,
    SCALE_OPTIONS,
    ScaledOutputs,
    ScaleRule,
    adaptive_outputs,
    labels_to_size,
    nearest_distances,
    resolve_scale,
    top_cells_rule,
)
from xmask.types import ModelOutput


class DotCounter(nn.Module):
    """A stand-in counter with no weights: a stride-4 cell is a head where its brightest pixel
    is bright and no neighbouring cell is brighter, so a bright dot spanning several cells (a
    head larger than the cells) fires several of them, as a real counter does on oversized
    heads."""

    def forward(self, images: torch.Tensor, with_embedding: bool = True) -> ModelOutput:
        grey = images.mean(dim=1, keepdim=True)
        cells = nnf.max_pool2d(grey, 4, ceil_mode=True)
        peak = (cells == nnf.max_pool2d(cells, 3, stride=1, padding=1)) & (cells > 0.5)
        return ModelOutput(logits=torch.where(peak, 5.0, -5.0), embedding=None)


def dots(size: tuple[int, int], points: np.ndarray, radius: float) -> np.ndarray:
    """``H×W×3 uint8``: white discs of ``radius`` on black at ``points`` ``(x, y)``."""
    rows, cols = np.mgrid[: size[0], : size[1]] + 0.5
    bright = np.zeros(size, dtype=bool)
    for x, y in points:
        bright |= (cols - x) ** 2 + (rows - y) ** 2 <= radius**2
    return np.repeat(bright[..., None] * np.uint8(255), 3, axis=2)


def count(image: np.ndarray, rule: ScaleRule) -> int:
    with torch.inference_mode():
        scaled = adaptive_outputs(DotCounter(), image, "cpu", rule, CountRule(0.0))
    return int((scaled.outputs.logits > 0).sum())


SCENE = np.array([[42.0 + 60 * i, 50.0 + 44 * j] for i in range(4) for j in range(3)])
"""Twelve heads at the centres of stride-4 cells."""


def test_the_rule_checks_its_fields() -> None:
    for bad in (
        {"canonical_side": 10},
        {"target_spacing": 0.0},
        {"quantile": 1.5},
        {"min_heads": 1},
        {"max_enlarge": 0.5},
        {"locate_enlarge": 1.0},
    ):
        with pytest.raises(ValueError, match="invalid ScaleRule"):
            ScaleRule(**bad)
    assert ScaleRule().first_scale((3000, 4000)) == pytest.approx(1024 / 4000)
    assert ScaleRule().first_scale((768, 1024)) == 1.0 and ONE_PASS.first_scale((9, 9999)) == 1.0
    assert resolve_scale("off", ScaleRule()) == ONE_PASS
    assert resolve_scale("shrink", ONE_PASS) == ScaleRule(target_spacing=None)
    assert SCALE_CHOICES == SCALE_OPTIONS  # the CLI's spelling of the options
    assert resolve_scale("auto", ONE_PASS) == ONE_PASS
    with pytest.raises(ValueError, match="scale must be one of"):
        resolve_scale("big", ONE_PASS)


def test_enlarged_pass_only_for_crowds_denser_than_the_target() -> None:
    rule = ScaleRule(target_spacing=12.0, min_heads=4, max_enlarge=2.0)
    grid = np.array([[x, y] for x in range(0, 60, 6) for y in range(0, 60, 6)], np.float32)
    np.testing.assert_allclose(nearest_distances(grid), 6.0)
    assert rule.enlarged_scale(grid, 1.0) == pytest.approx(2.0)  # 12 / 6
    assert rule.enlarged_scale(grid, 0.25) == pytest.approx(0.5)  # relative to the first pass
    assert rule.enlarged_scale(grid * 3, 1.0) is None  # spacing 18: sparse enough
    assert rule.enlarged_scale(grid[:3], 1.0) is None  # too few heads to say
    assert ScaleRule(target_spacing=12.0, min_heads=4, max_enlarge=1.5).enlarged_scale(
        grid, 1.0
    ) == pytest.approx(1.5)


def test_the_same_scene_counts_the_same_at_any_resolution() -> None:
    rule = ScaleRule(canonical_side=320, target_spacing=None)
    base = dots((240, 320), SCENE, radius=2.0)
    assert count(base, rule) == count(base, ONE_PASS) == len(SCENE)
    for factor in (2, 3, 4):
        big = np.asarray(Image.fromarray(base).resize((320 * factor, 240 * factor)))
        assert count(big, rule) == len(SCENE), factor  # shrunk back: one cell per dot
        assert count(big, ONE_PASS) > len(SCENE), factor  # as it is: oversized dots fire twice


def test_dense_tiny_heads_are_enlarged_and_points_come_back_in_image_pixels() -> None:
    grid = np.array([[3.0 + 4 * i, 3.0 + 4 * j] for i in range(12) for j in range(10)])
    image = dots((44, 52), grid, radius=0.8)
    rule = ScaleRule(canonical_side=None, target_spacing=10.0, min_heads=4, max_enlarge=3.0)
    with torch.inference_mode():
        scaled = adaptive_outputs(DotCounter(), image, "cpu", rule, CountRule(0.0))
    assert scaled.passes == 2 and scaled.scale == pytest.approx(2.5)
    assert scaled.size == (110, 130) and scaled.original == (44, 52)
    back = scaled.to_original(scaled.to_input(grid.astype(np.float32)))
    np.testing.assert_allclose(back, grid, atol=1e-4)


def test_top_cells_rule_counts_exactly_the_highest_cells() -> None:
    logits = torch.randn(1, 1, 9, 11, generator=torch.Generator().manual_seed(0))
    for n in (0, 1, 7, 98, 99, 150):
        threshold = top_cells_rule(logits, n).threshold
        assert int((logits > threshold).sum()) == min(n, 99), n


class SmoothCounter(nn.Module):
    """A stand-in counter whose logit is the brightness of each stride-4 cell (no ties)."""

    def forward(self, images: torch.Tensor, with_embedding: bool = True) -> ModelOutput:
        cells = nnf.avg_pool2d(images.mean(dim=1, keepdim=True), 4, ceil_mode=True)
        ramp = torch.arange(cells.numel(), dtype=cells.dtype).reshape(cells.shape) * 1e-6
        return ModelOutput(logits=10.0 * cells - 2.0 + ramp, embedding=None)


def test_the_locating_pass_keeps_the_count_and_places_heads_finer() -> None:
    scene = np.array([[41.0 + 60 * i, 49.0 + 44 * j] for i in range(4) for j in range(3)])
    image = dots((240, 320), scene, radius=2.0)
    kept = ScaleRule(canonical_side=None, target_spacing=None)
    located = ScaleRule(canonical_side=None, target_spacing=None, locate_enlarge=2.0)
    with torch.inference_mode():
        one = adaptive_outputs(SmoothCounter(), image, "cpu", kept, CountRule(0.0))
        two = adaptive_outputs(SmoothCounter(), image, "cpu", located, CountRule(0.0))
    n = len(one.heads(CountRule(0.0)))
    assert n == len(scene) and (two.passes, two.size, two.scale) == (2, (480, 640), 2.0)
    assert two.rule is not None and len(two.heads(CountRule(0.0))) == n
    enlarged = dots((480, 640), scene * 2, radius=4.0)
    with torch.inference_mode():
        alone = adaptive_outputs(SmoothCounter(), enlarged, "cpu", kept, CountRule(0.0))
    assert len(alone.heads(CountRule(0.0))) > n  # enlarging alone counts more
    placed = two.to_original(two.heads(CountRule(0.0)).points)
    error = np.linalg.norm(placed[:, None] - scene[None], axis=2).min(axis=1)
    first = np.linalg.norm(
        one.to_original(one.heads(CountRule(0.0)).points)[:, None] - scene[None], axis=2
    ).min(axis=1)
    assert error.max() < first.max()  # cells of 2 px instead of 4 px


@pytest.mark.parametrize(
    "rule",
    [
        ScaleRule(canonical_side=64),
        ScaleRule(target_spacing=40.0),
        ScaleRule(target_spacing=None, locate_enlarge=1.5),
    ],
)
def test_predictor_masks_and_points_are_in_the_image_pixels(rule: ScaleRule) -> None:
    crowd = make_crowd(70, 98, 14, seed=3)
    predictor = Predictor(tiny_model(), "cpu", scale=rule)
    features = predictor.set_image(crowd.image)
    assert features.scaled.size != (70, 98)  # the rule resized the input
    own = predictor.predict()
    given = predictor.segment(crowd.points)
    for prediction in (own, given):
        assert prediction.size == (70, 98) and prediction.labels.shape == (70, 98)
        n = len(prediction.points)
        assert (prediction.points[:, 0] <= 98).all() and (prediction.points[:, 1] <= 70).all()
        cols, rows = pixel_of(prediction.points, prediction.size).T
        np.testing.assert_array_equal(prediction.labels[rows, cols], np.arange(1, n + 1))
        counts = np.bincount(prediction.labels.ravel(), minlength=n + 1)[1:]
        np.testing.assert_array_equal(counts, prediction.areas)
    np.testing.assert_array_equal(given.points, crowd.points)


def test_head_points_of_an_enlarged_pass_never_share_an_image_pixel() -> None:
    # two heads 0.7 px apart on a ×2 input round into image pixel (5, 5): the second moves to
    # the nearest free pixel, so each head can own the pixel under its point (its mask)
    logits = torch.zeros(1, 1, 8, 8)
    scaled = ScaledOutputs(ModelOutput(logits=logits), 2.0, (32, 32), (16, 16), 1, 2)
    points = np.array([[10.2, 10.2], [10.9, 10.9], [3.0, 3.0]], np.float32)
    assert len({tuple(c) for c in pixel_of(scaled.to_original(points), (16, 16)).tolist()}) == 2
    placed = scaled.head_points(points)
    assert len({tuple(c) for c in pixel_of(placed, (16, 16)).tolist()}) == 3
    np.testing.assert_array_equal(placed[[0, 2]], scaled.to_original(points)[[0, 2]])
    assert np.abs(placed[1] - scaled.to_original(points)[1]).max() <= 1.0


def test_labels_to_size_takes_the_label_under_each_pixel_centre() -> None:
    small = np.array([[0, 1], [2, 0]], np.int32)
    big, areas = labels_to_size(small, (4, 4), np.array([[1.0, 3.0], [3.0, 0.5]], np.float32))
    expected = np.array([[0, 0, 1, 2], [0, 0, 1, 1], [2, 2, 0, 0], [2, 1, 0, 0]], np.int32)
    # each 2×2 block copies one input pixel; then point 1 (1, 3) and point 2 (3, 0.5) get
    # their own pixels back
    np.testing.assert_array_equal(big, expected)
    np.testing.assert_array_equal(areas, [4, 4])
