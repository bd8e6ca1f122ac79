"""Readers of every layout, on tiny fake datasets and (where present) the real ShanghaiTech."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from xmask.data.image_io import save_label_map
from xmask.data.readers import natural_key, open_dataset, resize_short_side
from xmask.errors import DataError
from xmask.types import Sample

RNG = np.random.default_rng(3)


def _image(path: Path, h: int = 30, w: int = 40) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def _points(n: int, h: int = 30, w: int = 40) -> np.ndarray:
    return RNG.uniform(0, 1, (n, 2)) * [w, h]


def _sh_mat(path: Path, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = np.empty((1, 1), dtype=object)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0] = (points, np.array([[len(points)]]))
    info[0, 0] = inner
    savemat(path, {"image_info": info})


def test_shanghaitech_layout(tmp_path: Path) -> None:
    pts = {n: _points(n + 1) for n in (1, 2, 10)}
    for n, p in pts.items():
        _image(tmp_path / "part_B" / "test_data" / "images" / f"IMG_{n}.png")
        _sh_mat(tmp_path / "part_B" / "test_data" / "ground-truth" / f"GT_IMG_{n}.mat", p)
    for root in (tmp_path, tmp_path / "part_B"):
        ds = open_dataset("shb", root, "test")
        assert ds.names == ["IMG_1.png", "IMG_2.png", "IMG_10.png"]
        sample = ds[2]
        assert isinstance(sample, Sample) and sample.count == 11
        np.testing.assert_allclose(sample.points, pts[10].astype(np.float32))
    with pytest.raises(DataError, match="part_A"):
        open_dataset("sha", tmp_path, "test")


def test_ucf_and_jhu_layouts(tmp_path: Path) -> None:
    p = _points(5)
    _image(tmp_path / "ucf" / "Train" / "img_0001.jpg")
    savemat(tmp_path / "ucf" / "Train" / "img_0001_ann.mat", {"annPoints": p})
    np.testing.assert_allclose(open_dataset("qnrf", tmp_path / "ucf")[0].points, p, atol=1e-4)
    _image(tmp_path / "jhu" / "val" / "images" / "0003.jpg")
    gt = tmp_path / "jhu" / "val" / "gt" / "0003.txt"
    gt.parent.mkdir(parents=True)
    gt.write_text("".join(f"{x} {y} 5 5 1 0\n" for x, y in p))
    np.testing.assert_allclose(open_dataset("jhu", tmp_path / "jhu", "val")[0].points, p, atol=1e-4)
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset("ucf", tmp_path / "ucf", "val")


def test_folder_txt_json_masks_and_split_subfolder(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _image(root / "train" / "a.png")
    _image(root / "train" / "b.jpg")
    _image(root / "train" / "c.png")
    (root / "train" / "a.txt").write_text("1 2\n3 4\n")
    (root / "train" / "points").mkdir()
    (root / "train" / "points" / "b.json").write_text(json.dumps([[5, 6]]))
    (root / "train" / "c.txt").write_text("")
    labels = np.zeros((30, 40), np.int32)
    labels[1:3, 0:3], labels[3:5, 2:5] = 1, 2
    save_label_map(root / "train" / "masks" / "a.png", labels)
    ds = open_dataset("folder", root, "train")
    assert ds.names == ["a.png", "b.jpg", "c.png"]
    a, b, c = ds[0], ds[1], ds[2]
    np.testing.assert_array_equal(a.points, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(a.labels, labels)
    assert b.labels is None and b.count == 1 and c.count == 0
    assert open_dataset("folder", root / "train", "anything").names == ds.names


def test_folder_csv_and_missing_ground_truth(tmp_path: Path) -> None:
    _image(tmp_path / "csv" / "images" / "x.png")
    _image(tmp_path / "csv" / "images" / "y.png")
    (tmp_path / "csv" / "points.csv").write_text("image,x,y\nx.png,1,1\nx.png,2,2\n")
    ds = open_dataset("folder", tmp_path / "csv")
    assert [s.count for s in ds] == [2, 0]
    _image(tmp_path / "nogt" / "z.png")
    with pytest.raises(DataError, match=r"z\.png: no point file"):
        open_dataset("folder", tmp_path / "nogt")[0]


def test_out_of_image_points_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _image(tmp_path / "a.png", 10, 10)
    (tmp_path / "a.txt").write_text("1 1\n11 3\nnan 2\n10 10\n")
    with caplog.at_level(logging.WARNING):
        sample = open_dataset("folder", tmp_path)[0]
    np.testing.assert_array_equal(sample.points, [[1, 1], [10, 10]])
    assert sample.dropped_points == 2 and "a.txt: dropped 2 of 4" in caplog.text


def test_selected_names_and_unknown_names(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _image(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text("1 1\n")
    assert open_dataset("folder", tmp_path, names=["c.png", "a.png"]).names == ["c.png", "a.png"]
    with pytest.raises(DataError, match=r"not in the train split: q\.png"):
        open_dataset("folder", tmp_path, names=["q.png"])


def test_resize_short_side_scales_points_and_labels() -> None:
    image = np.zeros((100, 300, 3), np.uint8)
    labels = np.zeros((100, 300), np.int32)
    image[40:50, 200:210] = 255
    labels[40:50, 200:210] = 1
    sample = Sample(image, np.array([[205.0, 45.0]], np.float32), "s", labels)
    small = resize_short_side(sample, 50)
    assert small.size == (50, 150) and small.scale == 0.5
    np.testing.assert_allclose(small.points, [[102.5, 22.5]])
    col, row = np.floor(small.points[0]).astype(int)
    assert small.labels is not None and small.labels[row, col] == 1
    assert small.image[row, col].min() > 200
    assert resize_short_side(sample, 100) is sample


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("mnist", ".")


def test_natural_order() -> None:
    assert sorted(["IMG_10", "IMG_2", "img_1"], key=natural_key) == ["img_1", "IMG_2", "IMG_10"]


@pytest.mark.parametrize(
    ("key", "split", "images"),
    [("sha", "train", 300), ("sha", "test", 182), ("shb", "train", 400), ("shb", "test", 316)],
)
def test_real_shanghaitech_listing(shanghaitech: Path, key: str, split: str, images: int) -> None:
    ds = open_dataset(key, shanghaitech, split)
    assert len(ds) == images
    sample = ds[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    assert sample.points.dtype == np.float32 and sample.count > 0


def test_real_greyscale_image_is_rgb(shanghaitech: Path) -> None:
    ds = open_dataset("sha", shanghaitech, "train")
    grey = next(item for item in ds.items if Image.open(item.image).mode == "L")
    sample = ds.load(grey)
    assert sample.greyscale and sample.image.shape[2] == 3
