"""Names keep what tells files apart, and a collision is an error, never an overwrite
(issue 27, item 6): COCO images of one stem in two folders, a second dataset exported into the
same folder without a prefix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from xmask.annotate.coco import ImageRecord, label_maps_to_coco, write_coco
from xmask.cli import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, main
from xmask.data.image_io import load_label_map
from xmask.data.points_io import read_txt_points
from xmask.data.synthetic import make_crowd, make_crowd_folder


def _record(name: str, heads: int, seed: int) -> ImageRecord:
    crowd = make_crowd(40, 50, heads, seed=seed)
    return ImageRecord(name, crowd.points, crowd.labels)


def _import(tmp_path: Path, *records: ImageRecord) -> tuple[int, Path]:
    coco, out = tmp_path / "corrected.json", tmp_path / "fixed"
    write_coco(coco, label_maps_to_coco(records))
    return main(["annotate", "import", "--coco", str(coco), "--out", str(out)]), out


def test_import_keeps_the_folder_that_tells_two_images_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _import(tmp_path, _record("cam1/IMG_X.jpg", 23, 0), _record("cam2/IMG_X.jpg", 5, 1))
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out)["heads"] == 28
    assert len(read_txt_points(out / "points" / "cam1" / "IMG_X.txt")) == 23
    assert load_label_map(out / "masks" / "cam2" / "IMG_X.png").max() == 5


def test_import_strips_only_the_common_folder(tmp_path: Path) -> None:
    code, out = _import(
        tmp_path, _record("images/IMG_1.jpg", 3, 0), _record("images/IMG_2.jpg", 4, 1)
    )
    assert code == EXIT_OK
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["IMG_1.png", "IMG_2.png"]


@pytest.mark.parametrize(
    "names", [("IMG_X.jpg", "IMG_X.png"), ("a/x.jpg", "../b/x.jpg"), ("a/x.jpg", "/etc/x.jpg")]
)
def test_import_refuses_colliding_or_escaping_names(
    tmp_path: Path, names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        code, out = _import(tmp_path, _record(names[0], 3, 0), _record(names[1], 4, 1))
    assert code == EXIT_ERROR and names[1] in caplog.text
    assert not out.exists()


def test_export_of_a_second_dataset_without_prefix_reports_collisions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_crowd_folder(tmp_path / "a", 2, height=40, width=50, n_heads=(3, 6), masks=False)
    make_crowd_folder(tmp_path / "b", 2, height=40, width=50, n_heads=(7, 9), masks=False, seed=5)
    out = tmp_path / "mix"
    base = ["data", "export", "--dataset", "folder", "--out", str(out), "--root"]
    assert main([*base, str(tmp_path / "a")]) == EXIT_OK
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*base, str(tmp_path / "b")]) == EXIT_SKIPPED
    assert "--prefix" in caplog.text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*base, str(tmp_path / "a")]) == EXIT_OK  # the first one's own re-run resumes
    assert main([*base, str(tmp_path / "b"), "--prefix", "b_"]) == EXIT_OK
    np.testing.assert_array_equal(
        read_txt_points(out / "b_syn_0001.txt"), read_txt_points(tmp_path / "b" / "syn_0001.txt")
    )
