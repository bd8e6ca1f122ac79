"""Damaged ground-truth files never escape as tracebacks: the reader names the file, batch
commands skip the image and exit with code 3 (issue 27, item 5); hostile JSON and numbers
(item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from conftest import tiny_crowd
from xmask.cli import EXIT_SKIPPED, main
from xmask.data.points_io import (
    read_csv_points,
    read_json_points,
    read_mat_points,
    read_txt_points,
)
from xmask.errors import DataError


def test_text_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("# Zählung\n1 2\n".encode("latin-1"))
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)))
    table = tmp_path / "points.csv"
    table.write_bytes("image,x,y\nbébé.jpg,1,2\n".encode("latin-1"))
    for path, read in ((latin, read_txt_points), (binary, read_json_points),
                       (table, read_csv_points)):  # fmt: skip
        with pytest.raises(DataError, match=path.name):
            read(path)


def test_excel_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    table = tmp_path / "points.csv"
    table.write_bytes(b"\xef\xbb\xbfimage,x,y\r\na.jpg,1,2\r\na.jpg,3,4\r\n")
    np.testing.assert_array_equal(read_csv_points(table)["a.jpg"], [[1, 2], [3, 4]])
    text = tmp_path / "a.txt"
    text.write_bytes(b"\xef\xbb\xbf1 2\n")
    np.testing.assert_array_equal(read_txt_points(text), [[1, 2]])


def test_damaged_mat_files_are_data_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.mat"
    info = np.empty((1, 1), dtype=object)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0] = (np.random.default_rng(0).uniform(0, 100, (40, 2)), np.array([[40]]))
    info[0, 0] = inner
    savemat(good, {"image_info": info}, do_compression=True)
    data = good.read_bytes()
    rng = np.random.default_rng(1)
    damaged = tmp_path / "damaged.mat"
    for position in rng.integers(128, len(data), 150):
        copy = bytearray(data)
        copy[position] ^= 0xFF
        damaged.write_bytes(bytes(copy))
        try:
            points = read_mat_points(damaged, "image_info")
        except DataError as err:
            assert "damaged.mat" in str(err)
        else:
            assert points.ndim == 2 and points.shape[1] == 2


def test_hostile_json(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps([[int("9" * 400), 1]]))
    for path in (deep, huge):
        with pytest.raises(DataError, match=path.name):
            read_json_points(path)


def test_batches_skip_a_bad_ground_truth_file(tmp_path: Path) -> None:
    crowd = tiny_crowd(tmp_path / "crowd", images=3, labeled=3)
    (crowd / "syn_0001.txt").write_bytes("1 2\n# été\n".encode("latin-1"))
    (crowd / "syn_0002.txt").write_bytes(b"\x00\xff\xfe" * 50)
    csv = tmp_path / "eval.csv"
    args = ["evaluate", "--dataset", "folder", "--root", str(crowd), "--split", "train",
            "--model", str(_run(tmp_path)), "--device", "cpu", "--csv", str(csv)]  # fmt: skip
    assert main(args) == EXIT_SKIPPED
    assert len(csv.read_text().splitlines()) == 2  # header and the one good image
    out = tmp_path / "masks"
    annotate = ["annotate", "--dataset", "folder", "--root", str(crowd), "--split", "train",
                "--out", str(out)]  # fmt: skip
    assert main(annotate) == EXIT_SKIPPED
    assert main(annotate) == EXIT_SKIPPED  # a re-run reports them again, no traceback
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["syn_0000.png"]


def _run(root: Path) -> Path:
    from conftest import make_run

    return make_run(root, mask_head=False)
