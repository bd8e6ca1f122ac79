"""Inputs that used to crash instead of erroring (issue 27, item 8): hostile COCO files, a
malformed recipe, images beyond Pillow's bomb guard, a model card pointing outside its folder,
and thousands of heads at one point."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmask.annotate.coco import ImageRecord, label_maps_to_coco, read_coco, write_coco
from xmask.annotate.coco_import import coco_to_label_maps
from xmask.annotate.superpixel import annotate_superpixel
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.data.image_io import load_image, max_image_pixels, set_max_image_pixels
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError, XmaskError
from xmask.geometry.circles import head_circles
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.model_folder import CARD_FILE, DEFAULT_MODEL, read_model_card, resolve_model
from xmask.train.config import load_config


def _coco(tmp_path: Path) -> dict:
    crowd = make_crowd(30, 40, 3, seed=0)
    return label_maps_to_coco([ImageRecord("a.jpg", crowd.points, crowd.labels)])


def test_coco_nested_too_deep_or_numbers_too_large(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match=r"deep\.json"):
        read_coco(deep)
    for field, value in (("keypoints", [int("9" * 400), 1, 2]),
                         ("segmentation", [[int("9" * 400), 1, 2, 3, 4, 5]])):  # fmt: skip
        coco = _coco(tmp_path)
        coco["annotations"][0][field] = value
        with pytest.raises(DataError, match="annotation 1"):
            coco_to_label_maps(coco, "big.json")
    coco = _coco(tmp_path)
    coco["images"][0]["height"] = int("9" * 400)
    with pytest.raises(DataError, match=r"big\.json"):
        coco_to_label_maps(coco, "big.json")


def test_malformed_recipe_is_a_config_error(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("schedule:\n  epochs: [1, 2\n  lr: }\n")
    with pytest.raises(XmaskError, match=r"bad\.yaml"):
        load_config(str(recipe))


def test_images_beyond_the_bomb_guard_need_the_option(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big = tmp_path / "wide.png"
    Image.new("RGB", (3000, 300)).save(big)  # 0.9 MP standing in for a 108 MP photo
    default = max_image_pixels()
    try:
        set_max_image_pixels(500_000)
        with pytest.raises(DataError, match="--max-image-pixels"):
            load_image(big)
        set_max_image_pixels(1_000_000)
        assert load_image(big).size == (300, 3000)
    finally:
        set_max_image_pixels(default)
    args = ["data", "stats", "--dataset", "folder", "--root", str(tmp_path), "--json"]
    (tmp_path / "wide.txt").write_text("1 1\n")
    assert main([*args, "--max-image-pixels", "500000"]) == 3
    assert "--max-image-pixels" in caplog.text
    assert main([*args, "--max-image-pixels", "1000000"]) == EXIT_OK
    assert max_image_pixels() == default  # the command leaves the process as it found it


@pytest.mark.parametrize("file", ["../weights.safetensors", "/etc/passwd", "sub/../../x"])
def test_model_card_weights_must_stay_in_the_folder(tmp_path: Path, file: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(DEFAULT_MODEL), folder)
    content = json.loads((folder / CARD_FILE).read_text())
    content["weights"]["file"] = file
    (folder / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="inside the model folder"):
        read_model_card(folder)


def test_thousands_of_heads_at_one_point_share_one_circle() -> None:
    size = (60, 80)
    points = np.full((5000, 2), [40.5, 30.5], dtype=np.float32)
    circles = head_circles(points, size)
    assert len(circles.pixels) <= size[0] * size[1] + len(points)  # not 5000 circles
    image = make_crowd(*size, 1, seed=0).image
    result = annotate_superpixel(image, points)
    labels = result.labels
    assert labels[30, 40] == 1  # the point pixel goes to the first head
    assert set(np.unique(labels)) <= set(range(len(points) + 1))
    assert (result.area > 0).sum() >= min(len(points), int((labels > 0).sum()))


def test_coco_file_with_a_bad_head_is_reported(tmp_path: Path, caplog) -> None:
    coco = _coco(tmp_path)
    coco["annotations"][0]["keypoints"] = [int("9" * 400), 1, 2]
    path = tmp_path / "c.json"
    write_coco(path, coco)
    with caplog.at_level(logging.ERROR):
        assert main(["annotate", "import", "--coco", str(path), "--out", str(tmp_path / "o")]) == (
            EXIT_ERROR
        )
    assert "annotation 1" in caplog.text
