"""``xmask annotate`` end to end on synthetic crowds: files, resume, bad items, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from xmask.cli import EXIT_SKIPPED, main
from xmask.data.image_io import load_label_map
from xmask.data.synthetic import make_crowd_folder
from xmask.geometry.circles import nnec_radii
from xmask.geometry.points import pixel_of


@pytest.fixture()
def crowd(tmp_path: Path) -> Path:
    make_crowd_folder(tmp_path / "data", 3, height=96, width=128, n_heads=(10, 25), masks=False)
    return tmp_path


def _annotate(root: Path) -> int:
    return main(["annotate", "--dataset", "folder", "--root", str(root / "data"), "--out",
                 str(root / "out")])  # fmt: skip


def test_annotate_writes_masks_points_coco_summary(crowd: Path) -> None:
    assert _annotate(crowd) == 0
    out = crowd / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["empty_masks"] == 0 and summary["skipped"] == []
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == summary["heads"]
    for stem in ("syn_0000", "syn_0001", "syn_0002"):
        labels = load_label_map(out / "masks" / f"{stem}.png")
        points = np.loadtxt(out / "points" / f"{stem}.txt", ndmin=2).astype(np.float32)
        cols, rows = pixel_of(points, labels.shape).T
        np.testing.assert_array_equal(labels[rows, cols], np.arange(1, len(points) + 1))
        radii = nnec_radii(points, labels.shape, duplicates="distinct")
        ys, xs = np.nonzero(labels)
        owner = labels[ys, xs] - 1
        dist = np.hypot(xs + 0.5 - points[owner, 0], ys + 0.5 - points[owner, 1])
        assert (dist <= radii[owner] + 1e-4).all()


def test_rerun_skips_finished_images_and_bad_items_are_reported(crowd: Path) -> None:
    assert _annotate(crowd) == 0
    before = (crowd / "out" / "masks" / "syn_0001.png").stat().st_mtime_ns
    (crowd / "data" / "syn_0002.png").write_bytes(b"broken")
    (crowd / "out" / "masks" / "syn_0002.png").unlink()
    assert _annotate(crowd) == EXIT_SKIPPED
    summary = json.loads((crowd / "out" / "summary.json").read_text())
    assert summary["already_done"] == 2 and summary["images"] == 0
    assert summary["skipped"][0]["name"] == "syn_0002.png"
    assert (crowd / "out" / "masks" / "syn_0001.png").stat().st_mtime_ns == before


def test_export_import_round_trip(crowd: Path) -> None:
    assert _annotate(crowd) == 0
    data, out = str(crowd / "data"), crowd / "out"
    coco = crowd / "coco.json"
    assert main(["annotate", "export", "--dataset", "folder", "--root", data, "--dir",
                 str(out), "--out", str(coco)]) == 0  # fmt: skip
    assert main(["annotate", "import", "--coco", str(coco), "--out", str(crowd / "back")]) == 0
    for mask in (out / "masks").iterdir():
        np.testing.assert_array_equal(
            load_label_map(crowd / "back" / "masks" / mask.name), load_label_map(mask)
        )


def test_missing_arguments_and_unknown_backend(
    crowd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["annotate", "--dataset", "folder"]) == 1
    assert "needs --out" in caplog.text
    args = ["annotate", "--dataset", "folder", "--root", str(crowd / "data"), "--out", "x"]
    assert main([*args, "--backend", "magic"]) == 1
    assert "unknown annotation backend 'magic'" in caplog.text


def test_sam_backend_needs_a_checkpoint(crowd: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["annotate", "--dataset", "folder", "--root", str(crowd / "data"), "--out", "x"]
    assert main([*args, "--backend", "sam"]) == 1
    assert "--sam-checkpoint" in caplog.text


def test_fastsam_backend_needs_weights(crowd: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["annotate", "--dataset", "folder", "--root", str(crowd / "data"), "--out", "x"]
    assert main([*args, "--backend", "fastsam-nnec"]) == 1
    assert "--fastsam-weights" in caplog.text


def test_overlays_image_files_and_a_few_images(crowd: Path) -> None:
    """Issue 27, item 14: previews, image files given directly, --limit and --names."""
    out = crowd / "few"
    args = ["annotate", "--dataset", "folder", "--root", str(crowd / "data"), "--out", str(out)]
    assert main([*args, "--limit", "2"]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["syn_0000.png", "syn_0001.png"]
    overlay = np.asarray(Image.open(out / "overlays" / "syn_0000.png"))
    assert overlay.shape == (96, 128, 3)
    assert main([*args, "--names", "syn_0002.png"]) == 0
    assert (out / "masks" / "syn_0002.png").is_file()
    assert main([*args, "--names", "nope.png"]) == 1
    assert main([*args, "--names", "syn_0002"]) == 0  # the stem names it too
    files = crowd / "files"
    image = crowd / "data" / "syn_0001.png"
    assert main(["annotate", "--images", str(image), "--out", str(files)]) == 0
    np.testing.assert_array_equal(
        load_label_map(files / "masks" / "syn_0001.png"),
        load_label_map(out / "masks" / "syn_0001.png"),
    )
    assert (files / "overlays" / "syn_0001.png").is_file()


def test_the_summary_and_coco_file_describe_the_whole_folder(crowd: Path) -> None:
    """Issue 27, item 6: a second call adds to annotations.json instead of replacing it."""
    out = crowd / "parts"
    args = ["annotate", "--dataset", "folder", "--root", str(crowd / "data"), "--out", str(out)]
    assert main([*args, "--limit", "2"]) == 0
    assert main([*args, "--names", "syn_0002.png"]) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [
        "syn_0000.png",
        "syn_0001.png",
        "syn_0002.png",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["folder_images"] == 3
    assert summary["folder_heads"] == len(coco["annotations"])
