"""Point formats of the annotation tools (LabelMe, CVAT for images 1.1, COCO keypoints, the
ShanghaiTech .mat): round trips, files as the tools write them, malformed and hostile files,
the folder reader, and ``xmask data convert`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmask.annotate.coco import ImageRecord, label_maps_to_coco
from xmask.cli import EXIT_OK, EXIT_SKIPPED, main
from xmask.data import points_io
from xmask.data.convert import FORMATS
from xmask.data.point_formats import (
    ImagePoints,
    coco_keypoints,
    cvat_xml,
    labelme_dict,
    mat_bytes,
    read_cvat,
    read_image_points,
    read_point_file,
)
from xmask.data.points_io import read_csv_points, write_csv_points
from xmask.data.readers import FolderDataset
from xmask.errors import DataError

POINTS = np.array([[12.3456, 20.5], [30.0, 10.25], [0.001, 39.999]])
SIZE = (40, 60)

LABELME_5 = r"""{
  "version": "5.4.1",
  "flags": {},
  "shapes": [
    {"label": "head", "points": [[12.3456, 20.5]], "group_id": null, "description": "",
     "shape_type": "point", "flags": {}, "mask": null},
    {"label": "person", "points": [[30.0, 10.25]], "group_id": 1, "description": "",
     "shape_type": "point", "flags": {}, "mask": null},
    {"label": "crowd", "points": [[1.0, 1.0], [5.0, 5.0]], "group_id": null,
     "description": "", "shape_type": "rectangle", "flags": {}, "mask": null}
  ],
  "imagePath": "..\\images\\IMG_1.jpg",
  "imageData": null,
  "imageHeight": 40,
  "imageWidth": 60
}
"""

CVAT_11 = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>heads</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <created>2024-05-02 10:00:00.000000+00:00</created>
      <subset>default</subset>
      <labels>
        <label>
          <name>head</name>
          <color>#fa3253</color>
          <type>points</type>
          <attributes>
          </attributes>
        </label>
      </labels>
    </task>
    <dumped>2024-05-02 10:05:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="IMG_1.jpg" width="60" height="40">
    <points label="head" source="manual" occluded="0" points="12.35,20.50;30.00,10.25" z_order="0">
    </points>
    <box label="head" source="manual" occluded="0" xtl="1.00" ytl="1.00" xbr="5.00" ybr="5.00"
     z_order="0">
    </box>
  </image>
  <image id="1" name="IMG_2.jpg" width="60" height="40">
  </image>
</annotations>
"""

COCO_KEYPOINTS = {  # CVAT's "COCO Keypoints 1.0" export, abridged to two images
    "licenses": [{"name": "", "id": 0, "url": ""}],
    "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": ""},
    "categories": [
        {"id": 1, "name": "head", "supercategory": "", "keypoints": ["head"], "skeleton": []},
        {"id": 2, "name": "person", "supercategory": "", "keypoints": ["nose", "left_eye"]},
    ],
    "images": [
        {"id": 1, "width": 60, "height": 40, "file_name": "IMG_1.jpg", "license": 0},
        {"id": 2, "width": 60, "height": 40, "file_name": "IMG_2.jpg", "license": 0},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [], "area": 0.0,
         "bbox": [12.35, 20.5, 0, 0], "iscrowd": 0, "attributes": {"occluded": False},
         "keypoints": [12.35, 20.5, 2], "num_keypoints": 1},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [], "area": 0.0,
         "bbox": [0, 0, 1, 1], "iscrowd": 0, "keypoints": [30.0, 10.25, 1, 31, 9, 2],
         "num_keypoints": 2},
        {"id": 3, "image_id": 1, "category_id": 1, "keypoints": [0, 0, 0], "num_keypoints": 0},
    ],
}  # fmt: skip


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _image(path: Path, size: tuple[int, int] = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)
    return path


# Round trips ------------------------------------------------------------------------------------


def test_round_trips_of_every_format(tmp_path: Path) -> None:
    images = {"IMG_1.jpg": ImagePoints(POINTS, SIZE), "IMG_2.jpg": ImagePoints(POINTS[:0], SIZE)}
    labelme = _write(tmp_path / "IMG_1.json", json.dumps(labelme_dict("IMG_1.jpg", POINTS, SIZE)))
    cvat = _write(tmp_path / "annotations.xml", cvat_xml(images))
    coco = _write(tmp_path / "coco.json", json.dumps(coco_keypoints(images)))
    mat = _write(tmp_path / "IMG_1.mat", mat_bytes(POINTS))
    write_csv_points(tmp_path / "points.csv", {"IMG_1.jpg": POINTS})

    assert read_point_file(labelme).keys() == {"IMG_1.jpg"}
    for many in (read_point_file(cvat), read_point_file(coco)):
        assert list(many) == ["IMG_1.jpg", "IMG_2.jpg"]
        assert many["IMG_1.jpg"].size == SIZE and many["IMG_2.jpg"].points.shape == (0, 2)
        np.testing.assert_allclose(many["IMG_1.jpg"].points, POINTS, atol=1e-3)
    for single in (labelme, mat):
        np.testing.assert_allclose(read_image_points(single), POINTS, atol=1e-3)
    np.testing.assert_allclose(read_point_file(labelme)["IMG_1.jpg"].points, POINTS, atol=1e-3)
    np.testing.assert_allclose(
        read_csv_points(tmp_path / "points.csv")["IMG_1.jpg"], POINTS, atol=1e-3
    )
    empty = _write(tmp_path / "empty.mat", mat_bytes(np.zeros((0, 2))))
    assert read_image_points(empty).shape == (0, 2)


# Files as the tools write them ------------------------------------------------------------------


def test_labelme_5_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ((name, entry),) = read_point_file(_write(tmp_path / "a.json", LABELME_5)).items()
    assert name == "IMG_1.jpg" and entry.size == SIZE  # imagePath's last part, never a path
    np.testing.assert_allclose(entry.points, POINTS[:2])  # both point shapes, whatever the label
    assert "1 shape(s) that are not points" in caplog.text


def test_cvat_for_images_file(tmp_path: Path) -> None:
    images = read_cvat(_write(tmp_path / "annotations.xml", CVAT_11))
    assert list(images) == ["IMG_1.jpg", "IMG_2.jpg"]  # the box is left out
    np.testing.assert_allclose(images["IMG_1.jpg"].points, [[12.35, 20.5], [30.0, 10.25]])
    assert images["IMG_2.jpg"].points.shape == (0, 2) and images["IMG_2.jpg"].size == SIZE


def test_coco_keypoints_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = read_point_file(_write(tmp_path / "k.json", json.dumps(COCO_KEYPOINTS)))
    # head keypoint of category 1; the person's first keypoint (nose); v = 0 gives no head
    np.testing.assert_allclose(images["IMG_1.jpg"].points, [[12.35, 20.5], [30.0, 10.25]])
    assert images["IMG_2.jpg"].points.shape == (0, 2) and images["IMG_2.jpg"].size == SIZE


# Malformed and hostile files --------------------------------------------------------------------

BAD_FILES = {
    "bad.xml": "<annotations><image name='a.jpg' width='6' height='5'>",
    "root.xml": "<?xml version='1.0'?><coco/>",
    "points.xml": "<annotations><image name='a.jpg' width='6' height='5'>"
    "<points label='head' points='1,2;3'/></image></annotations>",
    "size.xml": "<annotations><image name='a.jpg' width='six' height='5'/></annotations>",
    "bomb.xml": '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><annotations>&lol2;</annotations>',
    "external.xml": '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotations>&x;'
    "</annotations>",
    "shape.json": '{"shapes": [{"shape_type": "point", "points": [[1, 2], [3, 4]]}]}',
    "coco.json": '{"images": [{"id": 1, "file_name": "a.jpg", "height": 5, "width": 6}],'
    '"annotations": [{"id": 1, "image_id": 9, "keypoints": [1, 2, 2]}]}',
    "twice.json": '{"images": [{"id": 1, "file_name": "a.jpg", "height": 5, "width": 6},'
    '{"id": 2, "file_name": "a.jpg", "height": 5, "width": 6}], "annotations": []}',
    "ids.json": '{"images": [{"id": [1], "file_name": "a.jpg", "height": 5, "width": 6}],'
    '"annotations": []}',
    "latin1.json": b'{"shapes": [], "imagePath": "caf\xe9.jpg"}',
    "odd.yaml": "points: []",
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_malformed_files_name_the_file(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, BAD_FILES[name])
    with pytest.raises(DataError) as caught:
        read_point_file(path)
    assert caught.value.path == path and str(path) in str(caught.value)


def test_a_file_over_the_size_limit_is_refused_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(points_io, "MAX_POINT_FILE_BYTES", 100)
    path = _write(tmp_path / "annotations.xml", CVAT_11)
    with pytest.raises(DataError, match="over the 100 a point file may hold"):
        read_point_file(path)


@pytest.mark.parametrize("name", ["../../evil.jpg", "/etc/evil.jpg", "a/../../b.jpg", ""])
def test_image_names_that_leave_their_folder_are_refused(tmp_path: Path, name: str) -> None:
    cvat = _write(tmp_path / "a.xml", cvat_xml({name: ImagePoints(POINTS, SIZE)}))
    coco = _write(
        tmp_path / "a.json", json.dumps(coco_keypoints({name: ImagePoints(POINTS, SIZE)}))
    )
    for path in (cvat, coco):
        with pytest.raises(DataError, match="not a relative file name"):
            read_point_file(path)


# The folder reader ------------------------------------------------------------------------------


def _points_of(root: Path) -> dict[str, np.ndarray | None]:
    dataset = FolderDataset(root, "train")
    return {
        item.name: dataset.read_points(item) if item.annotated else None for item in dataset.items
    }


def test_folder_reads_labelme_and_mat_per_image(tmp_path: Path) -> None:
    for stem in ("IMG_1", "IMG_2", "IMG_3"):
        _image(tmp_path / f"{stem}.jpg")
    _write(tmp_path / "IMG_1.json", LABELME_5)
    _write(tmp_path / "points" / "IMG_2.mat", mat_bytes(POINTS))
    _write(tmp_path / "IMG_3.json", json.dumps({"points": POINTS.tolist()}))  # xmask's JSON
    found = _points_of(tmp_path)
    np.testing.assert_allclose(found["IMG_1.jpg"], POINTS[:2])
    np.testing.assert_allclose(found["IMG_2.jpg"], POINTS)
    np.testing.assert_allclose(found["IMG_3.jpg"], POINTS)


@pytest.mark.parametrize("layout", ["annotations.xml", "annotations.json", "coco-export"])
def test_folder_reads_one_cvat_or_coco_file(tmp_path: Path, layout: str) -> None:
    for stem in ("IMG_1", "IMG_2", "IMG_3"):
        _image(tmp_path / "images" / f"{stem}.jpg")
    _write(tmp_path / "points" / "IMG_2.txt", "1 1\n")  # an image's own point file wins
    if layout == "annotations.xml":
        _write(tmp_path / layout, CVAT_11)
    else:
        where = layout if layout != "coco-export" else "annotations/person_keypoints_default.json"
        _write(tmp_path / where, json.dumps(COCO_KEYPOINTS))
    found = _points_of(tmp_path)
    np.testing.assert_allclose(found["IMG_1.jpg"], [[12.35, 20.5], [30.0, 10.25]])
    np.testing.assert_allclose(found["IMG_2.jpg"], [[1, 1]])  # listed, but its file wins
    assert found["IMG_3.jpg"] is None  # not listed, no file: unlabeled


def test_folder_table_precedence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _image(tmp_path / "IMG_1.jpg")
    _image(tmp_path / "IMG_2.jpg")
    _write(tmp_path / "annotations.json", json.dumps(COCO_KEYPOINTS))
    _write(tmp_path / "annotations.xml", CVAT_11.replace("12.35,20.50;", ""))
    np.testing.assert_allclose(_points_of(tmp_path)["IMG_1.jpg"], [[30.0, 10.25]])  # xml > json
    _write(tmp_path / "points.csv", "image,x,y\nIMG_1.jpg,5,6\n")
    found = _points_of(tmp_path)  # csv > xml > json; an image the csv does not list has no heads
    np.testing.assert_allclose(found["IMG_1.jpg"], [[5, 6]])
    assert found["IMG_2.jpg"].shape == (0, 2)
    assert "left out" in caplog.text and "annotations.json" in caplog.text


def test_folder_refuses_two_coco_exports_and_shared_file_names(tmp_path: Path) -> None:
    _image(tmp_path / "IMG_1.jpg")
    _write(tmp_path / "annotations" / "person_keypoints_a.json", "{}")
    _write(tmp_path / "annotations" / "person_keypoints_b.json", "{}")
    with pytest.raises(DataError, match="several COCO keypoints files"):
        FolderDataset(tmp_path, "train")
    images = {f"{cam}/IMG_1.jpg": ImagePoints(POINTS, SIZE) for cam in ("cam1", "cam2")}
    xml = _write(tmp_path / "annotations.xml", cvat_xml(images))
    with pytest.raises(DataError, match="share the file name") as caught:
        FolderDataset(tmp_path, "train")
    assert caught.value.path == xml


# xmask data convert -----------------------------------------------------------------------------


def _labelled_folder(root: Path) -> None:
    for stem, text in (("IMG_1", "12.35 20.5\n30 10.25\n"), ("IMG_2", ""), ("IMG_3", None)):
        _image(root / f"{stem}.png")
        if text is not None:
            _write(root / f"{stem}.txt", text)


@pytest.mark.parametrize("to", FORMATS)
def test_convert_a_folder_to_every_format_and_back(
    tmp_path: Path, to: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _labelled_folder(src)
    assert main(["data", "convert", str(src), str(out), "--to", to]) == EXIT_OK
    assert "2 images with 2 points written" in capsys.readouterr().out
    for image in src.glob("*.png"):  # the converted labels beside the images
        (out / image.name).hardlink_to(image)
    found = _points_of(out)
    np.testing.assert_allclose(found["IMG_1.png"], [[12.35, 20.5], [30.0, 10.25]], atol=1e-3)
    assert found["IMG_2.png"].shape == (0, 2)
    assert found["IMG_3.png"] is None or to == "csv"  # a CSV cannot tell unlabeled from empty


def test_convert_one_file_to_another(tmp_path: Path) -> None:
    xml = _write(tmp_path / "annotations.xml", CVAT_11)
    assert main(["data", "convert", str(xml), str(tmp_path / "k.json"), "--to", "coco"]) == EXIT_OK
    back = read_point_file(tmp_path / "k.json")
    assert back.keys() == read_cvat(xml).keys() and back["IMG_1.jpg"].size == SIZE
    assert main(["data", "convert", str(xml), str(tmp_path / "lm"), "--to", "labelme"]) == 0
    np.testing.assert_allclose(
        read_image_points(tmp_path / "lm" / "IMG_1.json"), [[12.35, 20.5], [30, 10.25]]
    )


def test_convert_takes_sizes_from_images_and_skips_bad_items(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _image(tmp_path / "images" / "IMG_1.jpg")
    csv = _write(tmp_path / "points.csv", "image,x,y\nIMG_1.jpg,1,2\nIMG_9.jpg,3,4\n../x.jpg,5,6\n")
    code = main(["data", "convert", str(csv), str(tmp_path / "out"), "--to", "cvat"])
    assert code == EXIT_SKIPPED
    assert "IMG_9.jpg: image size unknown" in caplog.text
    assert "../x.jpg: not a relative file name" in caplog.text
    written = read_cvat(tmp_path / "out" / "annotations.xml")
    assert list(written) == ["IMG_1.jpg"] and written["IMG_1.jpg"].size == SIZE


def test_convert_a_folder_with_a_broken_point_file(tmp_path: Path) -> None:
    _labelled_folder(tmp_path / "src")
    _write(tmp_path / "src" / "IMG_2.txt", "not numbers\n")
    code = main(["data", "convert", str(tmp_path / "src"), str(tmp_path / "o"), "--to", "mat"])
    assert code == EXIT_SKIPPED
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["IMG_1.mat"]


def test_convert_errors_name_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _write(tmp_path / "annotations.xml", BAD_FILES["bomb.xml"])
    assert main(["data", "convert", str(bad), str(tmp_path / "o"), "--to", "txt"]) == 1
    assert f"{bad}: XML with a document type declaration is refused" in caplog.text
    with pytest.raises(SystemExit):
        main(["data", "convert", str(bad), str(tmp_path / "o"), "--to", "yolo"])


def test_the_cli_offers_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    assert "{" + ",".join(FORMATS) + "}" in capsys.readouterr().out


def test_the_coco_file_of_xmask_annotate_reads_as_points(tmp_path: Path) -> None:
    labels = np.zeros(SIZE, np.int32)
    labels[18:23, 10:15], labels[8:13, 28:33] = 1, 2
    coco = label_maps_to_coco([ImageRecord("IMG_1.jpg", POINTS[:2], labels)])
    path = _write(tmp_path / "annotations.json", json.dumps(coco))
    np.testing.assert_allclose(read_point_file(path)["IMG_1.jpg"].points, POINTS[:2], atol=1e-4)
