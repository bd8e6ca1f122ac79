"""Point files: every format, empty files, bad lines, NaN and out-of-image points."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from xmask.data.points_io import (
    clean_points,
    read_csv_points,
    read_json_points,
    read_mat_points,
    read_txt_points,
    write_points_txt,
)
from xmask.errors import DataError

POINTS = np.array([[1.5, 2.25], [10.0, 0.0], [3.75, 8.5]])


def test_txt_round_trip_and_extra_columns(tmp_path: Path) -> None:
    write_points_txt(tmp_path / "p.txt", POINTS)
    np.testing.assert_allclose(read_txt_points(tmp_path / "p.txt"), POINTS)
    (tmp_path / "jhu.txt").write_text("# x y w h o b\n1.5 2.25 4 4 0 0\n\n10,0\n3.75 8.5 1 1 1 1\n")
    np.testing.assert_allclose(read_txt_points(tmp_path / "jhu.txt"), POINTS)


def test_empty_txt_means_no_heads(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("")
    assert read_txt_points(tmp_path / "e.txt").shape == (0, 2)


def test_bad_txt_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("1 2\n3 four\n")
    with pytest.raises(DataError, match=r"b\.txt: line 2"):
        read_txt_points(tmp_path / "b.txt")
    (tmp_path / "c.txt").write_text("1\n")
    with pytest.raises(DataError, match="line 1"):
        read_txt_points(tmp_path / "c.txt")


@pytest.mark.parametrize(
    "content",
    [
        POINTS.tolist(),
        {"points": POINTS.tolist()},
        [{"x": x, "y": y} for x, y in POINTS.tolist()],
    ],
)
def test_json_formats(tmp_path: Path, content: object) -> None:
    (tmp_path / "p.json").write_text(json.dumps(content))
    np.testing.assert_allclose(read_json_points(tmp_path / "p.json"), POINTS)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{bad", "invalid JSON"), ('{"pts": []}', "no 'points'"), ('[{"x": 1}]', "'x' and 'y'")],
)
def test_bad_json(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "p.json").write_text(content)
    with pytest.raises(DataError, match=problem):
        read_json_points(tmp_path / "p.json")


def test_csv(tmp_path: Path) -> None:
    (tmp_path / "points.csv").write_text("image,x,y\na.jpg,1,2\nb.jpg,3,4\na.jpg,5,6\n")
    table = read_csv_points(tmp_path / "points.csv")
    np.testing.assert_allclose(table["a.jpg"], [[1, 2], [5, 6]])
    np.testing.assert_allclose(table["b.jpg"], [[3, 4]])
    (tmp_path / "bad.csv").write_text("name,x,y\na.jpg,1,2\n")
    with pytest.raises(DataError, match="lacks column"):
        read_csv_points(tmp_path / "bad.csv")


def test_mat_both_layouts(tmp_path: Path) -> None:
    savemat(tmp_path / "ucf.mat", {"annPoints": POINTS})
    np.testing.assert_allclose(read_mat_points(tmp_path / "ucf.mat", "annPoints"), POINTS)
    info = np.empty((1, 1), dtype=object)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0] = (POINTS, np.array([[3]]))
    info[0, 0] = inner
    savemat(tmp_path / "sh.mat", {"image_info": info})
    np.testing.assert_allclose(read_mat_points(tmp_path / "sh.mat", "image_info"), POINTS)
    with pytest.raises(DataError, match="no 'image_info' entry"):
        read_mat_points(tmp_path / "ucf.mat", "image_info")
    (tmp_path / "junk.mat").write_bytes(b"not matlab")
    with pytest.raises(DataError, match="unreadable MATLAB"):
        read_mat_points(tmp_path / "junk.mat", "annPoints")


def test_missing_ground_truth(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ground-truth file not found"):
        read_txt_points(tmp_path / "none.txt")


def test_clean_drops_nan_and_outside_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = np.array([[1, 1], [np.nan, 2], [20, 5], [5, -0.1], [10, 8], [0, 0], [np.inf, 1]])
    with caplog.at_level(logging.WARNING):
        points, dropped = clean_points(raw, (8, 10), "gt.txt")
    np.testing.assert_array_equal(points, [[1, 1], [10, 8], [0, 0]])
    assert points.dtype == np.float32 and dropped == 4
    assert "gt.txt: dropped 4 of 7 points (2 not finite, 2 outside" in caplog.text
