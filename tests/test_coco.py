"""COCO export/import: exact round trip, pycocotools agreement, tool formats, every bad input."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from xmask.annotate.coco import (
    AnnotationError,
    ImageRecord,
    label_maps_to_coco,
    read_coco,
    write_coco,
)
from xmask.annotate.coco_import import coco_to_label_maps
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError

# pycocotools 2.0 decode on numpy 2 warns about __array__(copy=...); harmless here
_DECODE_WARNING = "ignore:__array__ implementation:DeprecationWarning"


def _records() -> list[ImageRecord]:
    """Three synthetic crowds (one head with an empty mask), a noise map, an empty image."""
    records = []
    for seed, (h, w, n) in enumerate([(40, 56, 9), (33, 47, 5), (64, 48, 14)]):
        crowd = make_crowd(h, w, n, seed=seed, name=f"syn_{seed}.png")
        records.append(ImageRecord(crowd.name, crowd.points, crowd.labels))
    labels = records[1].labels.copy()
    labels[labels == 3] = 0  # head 3 lost its mask
    records[1] = records[1]._replace(labels=labels)
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 6, size=(21, 17)).astype(np.int32)
    records.append(ImageRecord("noise.png", rng.uniform(0, 17, size=(5, 2)), noise))
    records.append(ImageRecord("empty.png", np.zeros((0, 2)), np.zeros((8, 9), np.int32)))
    return records


@pytest.fixture(scope="module")
def records() -> list[ImageRecord]:
    return _records()


@pytest.fixture
def coco(records: list[ImageRecord]) -> dict[str, Any]:
    return label_maps_to_coco(records)


def _single(size: tuple[int, int] = (10, 12)) -> dict[str, Any]:
    """One image with two heads: a 3×3 square each."""
    labels = np.zeros(size, dtype=np.int32)
    labels[2:5, 2:5] = 1
    labels[5:8, 6:9] = 2
    points = np.array([[3.5, 3.5], [7.5, 6.5]], dtype=np.float32)
    return label_maps_to_coco([ImageRecord("one.png", points, labels)])


def _assert_same(records: list[ImageRecord], back: dict) -> None:
    assert list(back) == [r.file_name for r in records]
    for record in records:
        points, labels = back[record.file_name]
        np.testing.assert_array_equal(labels, record.labels)
        np.testing.assert_array_equal(points, np.asarray(record.points, np.float32))
        assert labels.dtype == np.int32 and points.dtype == np.float32


def test_round_trip_is_exact(records: list[ImageRecord], coco: dict, tmp_path: Path) -> None:
    _assert_same(records, coco_to_label_maps(coco, "memory"))
    write_coco(tmp_path / "annotations.json", coco)
    again = read_coco(tmp_path / "annotations.json")
    assert again == json.loads(json.dumps(coco))
    _assert_same(records, coco_to_label_maps(again, tmp_path / "annotations.json"))


def test_export_fields_match_pycocotools(records: list[ImageRecord], coco: dict) -> None:
    assert coco["categories"] == [
        {"id": 1, "name": "head", "supercategory": "person", "keypoints": ["head"], "skeleton": []}
    ]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert len(coco["annotations"]) == sum(len(r.points) for r in records)
    for ann in coco["annotations"]:
        record = records[ann["image_id"] - 1]
        head = ann["attributes"]["xmask_head"]
        mask = np.asfortranarray((record.labels == head).astype(np.uint8))
        ref = mask_utils.encode(mask)
        assert ann["segmentation"] == {"size": list(mask.shape), "counts": ref["counts"].decode()}
        assert ann["area"] == int(mask_utils.area(ref)) == int(mask.sum())
        assert ann["bbox"] == mask_utils.toBbox(ref).tolist()
        x, y = np.asarray(record.points, np.float32)[head - 1]
        assert ann["keypoints"] == [float(x), float(y), 2] and ann["num_keypoints"] == 1
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
    empty = [a for a in coco["annotations"] if a["image_id"] == 2 and a["area"] == 0]
    assert [a["attributes"]["xmask_head"] for a in empty] == [3]


@pytest.mark.filterwarnings(_DECODE_WARNING)
def test_file_loads_in_pycocotools(records: list[ImageRecord], coco: dict, tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    write_coco(path, coco)
    api = COCO(str(path))
    assert api.getCatIds(catNms=["head"]) == [1]
    for image in api.loadImgs(api.getImgIds()):
        record = records[image["id"] - 1]
        anns = api.loadAnns(api.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == len(record.points)
        for ann in anns:
            head = ann["attributes"]["xmask_head"]
            np.testing.assert_array_equal(api.annToMask(ann), record.labels == head)


def test_tools_without_attributes_identify_heads_by_keypoint(
    records: list[ImageRecord], coco: dict
) -> None:
    """A tool that drops unknown fields and renumbers annotations: order by annotation id."""
    for ann in coco["annotations"]:
        del ann["attributes"]
    coco["annotations"].reverse()
    _assert_same(records, coco_to_label_maps(coco, "cvat.json"))


def test_order_follows_head_index_not_annotation_order(records: list, coco: dict) -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(len(coco["annotations"])) + 100
    for ann, new_id in zip(coco["annotations"], ids, strict=True):
        ann["id"] = int(new_id)
    coco["annotations"].reverse()
    _assert_same(records, coco_to_label_maps(coco, "shuffled.json"))


def test_deleted_head_is_renumbered() -> None:
    coco = _single()
    del coco["annotations"][0]
    points, labels = coco_to_label_maps(coco, "x")["one.png"]
    np.testing.assert_array_equal(points, [[7.5, 6.5]])
    assert set(np.unique(labels)) == {0, 1} and labels[6, 7] == 1


@pytest.mark.filterwarnings(_DECODE_WARNING)
def test_polygons_and_uncompressed_rle() -> None:
    coco = _single((10, 12))
    square = [2.0, 2.0, 5.0, 2.0, 5.0, 5.0, 2.0, 5.0]
    coco["annotations"][0]["segmentation"] = [square]
    mask = np.zeros((10, 12), dtype=np.uint8, order="F")
    mask[5:8, 6:9] = 1
    counts = [int(c) for c in _uncompressed(mask)]
    coco["annotations"][1]["segmentation"] = {"size": [10, 12], "counts": counts}
    _, labels = coco_to_label_maps(coco, "tool.json")["one.png"]
    polygon = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([square], 10, 12)))
    np.testing.assert_array_equal(labels == 1, polygon.astype(bool))
    np.testing.assert_array_equal(labels == 2, mask.astype(bool))


def _uncompressed(mask: np.ndarray) -> list[int]:
    """Reference COCO counts by hand: alternating zero/one runs of the column-major pixels."""
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] if flat[0] else []) + runs


def _overlapping() -> dict[str, Any]:
    """Head 2's mask grown by two columns to the left, into head 1's square."""
    coco = _single()
    labels = np.zeros((10, 12), dtype=np.uint8, order="F")
    labels[2:8, 4:9] = 1
    rle = mask_utils.encode(labels)
    coco["annotations"][1]["segmentation"] = {"size": [10, 12], "counts": rle["counts"].decode()}
    return coco


def test_overlap_goes_to_the_nearest_point(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _, labels = coco_to_label_maps(_overlapping(), "x")["one.png"]
    assert "3 pixels claimed by several heads" in caplog.text
    # contested: column 4, rows 2–4; centres (4.5, r + 0.5) vs points (3.5, 3.5), (7.5, 6.5)
    np.testing.assert_array_equal(labels[2:5, 4], [1, 1, 1])
    assert labels[2:5, 2:4].tolist() == [[1, 1]] * 3
    assert (labels[5:8, 4:9] == 2).all() and (labels[2:5, 5:9] == 2).all()


def test_overlap_error_names_both_annotations() -> None:
    with pytest.raises(AnnotationError, match=r"image 'one.png' \(id 1\), annotation 2: .*1 and 2"):
        coco_to_label_maps(_overlapping(), "x", overlap="error")


def _bad(coco: dict, match: str, source: str = "fixed.json") -> AnnotationError:
    with pytest.raises(AnnotationError, match=match) as info:
        coco_to_label_maps(coco, source)
    assert source in str(info.value)
    return info.value


def test_unknown_image_id() -> None:
    coco = _single()
    coco["annotations"][1]["image_id"] = 9
    err = _bad(coco, r"image id 9, annotation 2: unknown image")
    assert err.annotation == 2


@pytest.mark.parametrize("size", [[12, 10], [10, 13], None])
def test_mask_size_differs_from_image(size: list[int] | None) -> None:
    coco = _single()
    coco["annotations"][0]["segmentation"]["size"] = size
    _bad(coco, r"image 'one.png' \(id 1\), annotation 1: mask size .* outside the image")


def test_polygon_outside_image() -> None:
    coco = _single()
    coco["annotations"][1]["segmentation"] = [[2.0, 2.0, 14.0, 2.0, 5.0, 5.0]]
    _bad(coco, r"'one.png' \(id 1\), annotation 2: a polygon vertex lies outside the 12×10")


@pytest.mark.parametrize("segmentation", ["missing", [], [[]], {}, None])
def test_head_without_a_mask(segmentation: object) -> None:
    coco = _single()
    if segmentation == "missing":
        del coco["annotations"][1]["segmentation"]
    else:
        coco["annotations"][1]["segmentation"] = segmentation
    _bad(coco, r"'one.png' \(id 1\), annotation 2: head without a mask")


def test_two_masks_on_one_head_by_index() -> None:
    coco = _single()
    coco["annotations"][1]["attributes"]["xmask_head"] = 1
    _bad(coco, r"'one.png' \(id 1\), annotation 2: two masks on one head: annotations 1 and 2")


def test_two_masks_on_one_head_by_keypoint() -> None:
    coco = _single()
    for ann in coco["annotations"]:
        del ann["attributes"]
    coco["annotations"][1]["keypoints"] = [3.5, 3.5, 2]
    _bad(coco, r"annotation 2: two masks on one head: .* head point \(3.5, 3.5\)")


def test_duplicate_points_are_fine_with_head_index() -> None:
    coco = _single()
    coco["annotations"][1]["keypoints"] = [3.5, 3.5, 2]
    points, _ = coco_to_label_maps(coco, "x")["one.png"]
    np.testing.assert_array_equal(points, [[3.5, 3.5], [3.5, 3.5]])


@pytest.mark.parametrize(
    ("keypoints", "match"),
    [
        (None, "no head point"),
        ([3.0, 4.0], "no head point"),
        ([3.0, 4.0, 0], "no head point"),
        (["3", 4.0, 2], "no head point"),
        ([12.5, 4.0, 2], r"head point \(12.5, 4.0\) lies outside the 12×10 image"),
    ],
)
def test_bad_head_point(keypoints: list | None, match: str) -> None:
    coco = _single()
    coco["annotations"][0]["keypoints"] = keypoints
    _bad(coco, rf"'one.png' \(id 1\), annotation 1: {match}")


@pytest.mark.parametrize(
    ("segmentation", "match"),
    [
        ({"size": [10, 12], "counts": [3, 4]}, "RLE counts cover 7 pixels"),
        ({"size": [10, 12], "counts": [130, -10]}, "RLE counts cover"),
        ({"size": [10, 12], "counts": "a b"}, "not in the RLE alphabet"),
        ({"size": [10, 12], "counts": "0"}, "RLE counts cover 0 pixels"),
        ({"size": [10, 12], "counts": 5}, "string or a list of integers"),
        ([[1.0, 1.0, 2.0, 2.0]], "3 or more"),
        ([["a", 1, 2, 2, 3, 3]], "list of numbers"),
        ("text", "RLE object or a list of polygons"),
    ],
)
def test_bad_segmentation(segmentation: object, match: str) -> None:
    coco = _single()
    coco["annotations"][0]["segmentation"] = segmentation
    _bad(coco, rf"annotation 1: .*{match}")


def test_bad_head_index_and_ids() -> None:
    coco = _single()
    coco["annotations"][0]["attributes"]["xmask_head"] = 0
    _bad(coco, r"annotation 1: attributes.xmask_head must be a positive integer")
    coco = _single()
    coco["annotations"][1]["id"] = 1
    _bad(coco, r"annotation 1: the id appears twice")
    coco = _single()
    coco["images"].append(dict(coco["images"][0], id=2))
    _bad(coco, r"image 'one.png' \(id 2\): the id or file name appears twice")
    coco = _single()
    del coco["images"][0]["height"]
    _bad(coco, r"images\[0\] needs integer")


def test_export_rejects_labels_without_points() -> None:
    labels = np.array([[0, 1], [2, 3]], dtype=np.int32)
    with pytest.raises(ValueError, match=r"bad.png: labels must lie in \[0, 2\]"):
        label_maps_to_coco([ImageRecord("bad.png", np.zeros((2, 2)), labels)])
    with pytest.raises(ValueError, match="integer"):
        label_maps_to_coco([ImageRecord("bad.png", np.zeros((3, 2)), labels.astype(float))])


def test_read_coco_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_coco(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2, column 12"):
        read_coco(broken)
    broken.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        read_coco(broken)
    broken.write_text('{"images": []}')
    with pytest.raises(DataError, match="no 'annotations' list"):
        read_coco(broken)


def test_import_does_not_modify_its_input(coco: dict) -> None:
    before = copy.deepcopy(coco)
    coco_to_label_maps(coco, "x")
    assert coco == before
