"""``xmask predict``: folders with a bad file, resume, single images, patterns, regions,
counting-only models, a huge image and videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from conftest import make_run, tiny_model
from xmask.cli import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, main
from xmask.data.image_io import load_label_map
from xmask.data.points_io import read_txt_points
from xmask.data.synthetic import make_crowd, make_crowd_folder
from xmask.geometry.points import pixel_of
from xmask.inference.tiling import image_tensor

STEMS = ("syn_0000", "syn_0001", "syn_0002")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    make_crowd_folder(root / "images", 3, height=64, width=90, n_heads=(5, 12), masks=False)
    (root / "images" / "broken.png").write_bytes(b"not a png")
    make_run(root)
    make_run(root, mask_head=False)
    return root


def _predict(root: Path, *args: str, model: str = "run") -> int:
    return main(["predict", *args, "--model", str(root / model), "--device", "cpu"])


def test_folder_with_a_corrupt_file_then_resume(setup: Path) -> None:
    out = setup / "out"
    assert _predict(setup, str(setup / "images"), "--out", str(out)) == EXIT_SKIPPED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["already_done"] == 0
    assert [s["name"] for s in summary["skipped"]] == ["broken.png"]
    assert "broken.png" in summary["skipped"][0]["problem"]
    assert summary["seconds"] > 0 and summary["count_rule"] == "+0.00"
    heads = 0
    for stem in STEMS:
        labels = load_label_map(out / "masks" / f"{stem}.png")
        points = read_txt_points(out / "points" / f"{stem}.txt").astype(np.float32)
        cols, rows = pixel_of(points, labels.shape).T
        np.testing.assert_array_equal(labels[rows, cols], np.arange(1, len(points) + 1))
        record = json.loads((out / "predictions" / f"{stem}.json").read_text())
        assert record["count"] == len(record["points"]) == len(points) == len(record["scores"])
        np.testing.assert_allclose(record["points"], points, atol=0.01)
        assert record["areas"] == np.bincount(labels.ravel())[1:].tolist()
        assert Image.open(out / "overlays" / f"{stem}.jpg").size == (90, 64)
        heads += len(points)
    assert summary["heads"] == heads > 0
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == heads

    before = (out / "masks" / "syn_0001.png").stat().st_mtime_ns
    (out / "predictions" / "syn_0002.json").unlink()
    assert _predict(setup, str(setup / "images"), "--out", str(out)) == EXIT_SKIPPED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == 2 and summary["predicted"] == 1 and summary["images"] == 3
    assert (out / "masks" / "syn_0001.png").stat().st_mtime_ns == before
    assert len(COCO(str(out / "annotations.json")).getAnnIds()) == heads


def test_single_image_pattern_and_bad_usage(
    setup: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = setup / "images" / "syn_0000.png"
    monkeypatch.chdir(setup)
    assert _predict(setup, str(image)) == EXIT_OK
    assert (setup / "predict-syn_0000" / "masks" / "syn_0000.png").is_file()
    pattern = str(setup / "images" / "syn_000[12].png")
    assert _predict(setup, pattern, "--out", str(setup / "glob")) == EXIT_OK
    assert sorted(p.name for p in (setup / "glob" / "predictions").iterdir()) == [
        "syn_0001.json",
        "syn_0002.json",
    ]
    assert _predict(setup, str(setup / "images" / "*.gif")) == EXIT_ERROR
    assert "matches no image" in caplog.text
    assert _predict(setup, str(setup / "nothing.png")) == EXIT_ERROR
    assert "no such file" in caplog.text
    assert _predict(setup, str(image), "--dataset", "folder", "--root", str(setup)) == EXIT_ERROR
    assert "either SOURCE or --dataset" in caplog.text
    assert _predict(setup, str(image), model="missing-model") == EXIT_ERROR
    assert "registered" in caplog.text


def test_region_counts_inside_only(setup: Path) -> None:
    image = setup / "images" / "syn_0001.png"
    full, part = setup / "roi-full", setup / "roi-part"
    assert _predict(setup, str(image), "--out", str(full)) == EXIT_OK
    assert _predict(setup, str(image), "--out", str(part), "--roi", "0,0 45,0 45,64 0,64") == 0
    whole = json.loads((full / "predictions" / "syn_0001.json").read_text())
    inside = json.loads((part / "predictions" / "syn_0001.json").read_text())
    expected = [p for p in whole["points"] if p[0] < 45]
    assert inside["count"] == len(expected) and inside["points"] == expected
    assert inside["roi"] == [[0, 0], [45, 0], [45, 64], [0, 64]]
    assert not load_label_map(part / "masks" / "syn_0001.png")[:, 45:].any()
    assert _predict(setup, str(image), "--out", str(part), "--roi", "1,2 3") == EXIT_ERROR


def test_counting_only_model_writes_no_masks(setup: Path) -> None:
    out = setup / "stage1"
    assert _predict(setup, str(setup / "images" / "syn_0000.png"), "--out", str(out),
                    model="run-stage1") == EXIT_OK  # fmt: skip
    record = json.loads((out / "predictions" / "syn_0000.json").read_text())
    assert record["areas"] is None and record["count"] == len(record["points"])
    assert not (out / "masks").exists() and not (out / "annotations.json").exists()
    assert (out / "overlays" / "syn_0000.jpg").is_file()


def test_huge_image_runs_in_tiles(setup: Path) -> None:
    crowd = make_crowd(1800, 2600, 300, seed=4)  # 4.7 MP: network tiles and two windows
    Image.fromarray(crowd.image).save(setup / "huge.png")
    with torch.no_grad():  # the random model's top 0.1 % of cells: a few hundred heads
        logits = tiny_model()(image_tensor(crowd.image[:600, :800], "cpu")).logits
    threshold = str(float(torch.quantile(logits.flatten(), 0.999)))
    out = setup / "huge"
    args = [str(setup / "huge.png"), "--out", str(out), "--threshold", threshold]
    assert _predict(setup, *args) == EXIT_OK
    record = json.loads((out / "predictions" / "huge.json").read_text())
    labels = load_label_map(out / "masks" / "huge.png")
    assert labels.shape == (1800, 2600) and 50 < record["count"] == len(record["points"]) < 60000
    areas = np.bincount(labels.ravel(), minlength=record["count"] + 1)[1:]
    assert record["areas"] == areas.tolist() and areas.min() > 0


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 5) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_video_gives_annotated_video_counts_and_plot(setup: Path) -> None:
    pytest.importorskip("av")
    import av

    frames = [make_crowd(64, 96, 8 + i, seed=i).image for i in range(6)]
    _write_video(setup / "clip.mp4", frames)
    (setup / "broken.mp4").write_bytes(b"\x00" * 100)
    out = setup / "video"
    args = [str(setup / "clip.mp4"), str(setup / "broken.mp4"), "--out", str(out), "--every", "2"]
    assert _predict(setup, *args) == EXIT_SKIPPED
    with (out / "videos" / "clip.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.4, 0.8])
    with av.open(str(out / "videos" / "clip.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (64, 96, 3)
    assert (out / "videos" / "clip-counts.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos_predicted"] == summary["videos"] == 1
    assert summary["skipped"][0]["name"] == "broken.mp4"
    again = [str(setup / "clip.mp4"), "--out", str(out)]
    assert _predict(setup, *again, "--every", "2") == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["already_done"] == 1
    assert _predict(setup, *again) == EXIT_OK  # another --every: redone
    assert json.loads((out / "summary.json").read_text())["videos_predicted"] == 1
