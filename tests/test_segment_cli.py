"""``xmask segment`` on a folder with a corrupt file: outputs, summary, COCO, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from test_predictor import make_run
from xmask.cli import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, main
from xmask.data.image_io import load_label_map
from xmask.data.points_io import read_txt_points
from xmask.data.synthetic import make_crowd_folder
from xmask.geometry import pixel_of

STEMS = ("syn_0000", "syn_0001", "syn_0002")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segment")
    make_crowd_folder(root / "images", 3, height=64, width=90, n_heads=(5, 12), masks=False)
    (root / "images" / "broken.png").write_bytes(b"not a png")
    make_run(root)
    make_run(root, mask_head=False)
    return root


def _segment(root: Path, *extra: str) -> int:
    return main(["segment", str(root / "images"), "--checkpoint", str(root / "run"),
                 "--out", str(root / "out"), "--device", "cpu", *extra])  # fmt: skip


def test_folder_with_a_corrupt_file_then_resume(setup: Path) -> None:
    assert _segment(setup) == EXIT_SKIPPED
    out = setup / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["already_done"] == 0
    assert [s["name"] for s in summary["skipped"]] == ["broken.png"]
    assert "broken.png" in summary["skipped"][0]["problem"]
    assert summary["seconds"] > 0 and summary["count_threshold"] == 0.0
    heads = 0
    for stem in STEMS:
        labels = load_label_map(out / "masks" / f"{stem}.png")
        points = read_txt_points(out / "points" / f"{stem}.txt").astype(np.float32)
        cols, rows = pixel_of(points, labels.shape).T
        np.testing.assert_array_equal(labels[rows, cols], np.arange(1, len(points) + 1))
        assert (out / "overlays" / f"{stem}.png").is_file()
        heads += len(points)
    assert summary["heads"] == heads > 0
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == heads

    before = (out / "masks" / "syn_0001.png").stat().st_mtime_ns
    (out / "masks" / "syn_0002.png").unlink()
    assert _segment(setup) == EXIT_SKIPPED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == 2 and summary["images"] == 1
    assert (out / "masks" / "syn_0001.png").stat().st_mtime_ns == before
    assert len(COCO(str(out / "annotations.json")).getAnnIds()) == heads


def test_single_image_and_bad_usage(setup: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = setup / "images" / "syn_0000.png"
    out = setup / "one"
    args = ["segment", str(image), "--checkpoint", str(setup / "run"), "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == EXIT_OK
    assert (out / "masks" / "syn_0000.png").is_file()
    assert main([*args, "--dataset", "folder", "--root", str(setup)]) == EXIT_ERROR
    assert "either SOURCE or --dataset" in caplog.text
    stage1 = ["segment", str(image), "--checkpoint", str(setup / "run-stage1"), "--out", str(out)]
    assert main(stage1) == EXIT_ERROR
    assert "no mask head" in caplog.text
