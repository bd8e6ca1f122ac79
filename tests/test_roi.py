"""Regions of interest: parsing, rasterisation against a ray-casting reference, restriction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from xmask.apps.roi import parse_polygon, polygon_mask, read_polygon, restrict
from xmask.data.render import ROI_COLOUR
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError, UsageError
from xmask.inference.predictor import Predictor


def _inside_reference(vertices: np.ndarray, x: float, y: float) -> bool:
    """Even-odd ray casting for one point (the slow, obvious rule)."""
    inside = False
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def test_inline_json_and_file_forms(tmp_path: Path) -> None:
    expected = np.array([[1, 2], [30, 2], [15.5, 40]], dtype=np.float64)
    np.testing.assert_array_equal(parse_polygon("1,2 30,2 15.5,40"), expected)
    np.testing.assert_array_equal(parse_polygon("[[1, 2], [30, 2], [15.5, 40]]"), expected)
    np.testing.assert_array_equal(parse_polygon('{"roi": [[1, 2], [30, 2], [15.5, 40]]}'), expected)
    file = tmp_path / "region.txt"
    file.write_text("1,2; 30,2; 15.5,40\n")
    np.testing.assert_array_equal(read_polygon(str(file)), expected)
    file.write_text("1,2 oops")
    with pytest.raises(DataError, match=r"region\.txt"):
        read_polygon(str(file))


@pytest.mark.parametrize("text", ["1,2 3,4", "a,b c,d e,f", "1,2,3 4,5,6 7,8,9", "1,2 nan,3 4,5"])
def test_bad_polygons_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="region"):
        parse_polygon(text)


def test_mask_follows_pixel_centres() -> None:
    vertices = np.array([[3.2, 1.0], [40.0, 9.5], [25.0, 33.0], [12.0, 20.0], [1.0, 28.0]])
    mask = polygon_mask(vertices, (36, 44))
    reference = np.array(
        [[_inside_reference(vertices, c + 0.5, r + 0.5) for c in range(44)] for r in range(36)]
    )
    assert (mask != reference).sum() <= 0.01 * reference.sum()  # edges may go either way
    with pytest.raises(UsageError, match="covers no pixel"):
        polygon_mask(np.array([[100.0, 100], [120, 100], [110, 120]]), (36, 44))


def test_restrict_keeps_heads_inside_and_clips_masks() -> None:
    crowd = make_crowd(64, 96, 16, seed=5)
    full = Predictor(tiny_model(), "cpu").segment_points(crowd.image, crowd.points)
    vertices = np.array([[0.0, 0.0], [48.0, 0.0], [48.0, 64.0], [0.0, 64.0]])
    part = restrict(full, vertices)
    inside = full.points[:, 0] < 48
    assert part.count == inside.sum() == len(part.points)
    np.testing.assert_array_equal(part.points, full.points[inside])
    assert part.labels is not None and part.areas is not None and full.labels is not None
    assert not part.labels[:, 48:].any()
    for new, old in enumerate(np.flatnonzero(inside), start=1):
        np.testing.assert_array_equal(
            part.labels == new, (full.labels == old + 1) & ~(np.arange(96) >= 48)[None, :]
        )
    np.testing.assert_array_equal(part.areas, np.bincount(part.labels.ravel())[1:])
    overlay = part.overlay(dot_radius=0)
    assert (overlay == ROI_COLOUR).all(axis=2).any()  # the outline is drawn
