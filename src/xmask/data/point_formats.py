"""Head points in the formats of annotation tools — LabelMe, CVAT for images 1.1, COCO keypoints
— and the ShanghaiTech ``.mat``, read and written; any point file read by its content.

Points are ``N×2`` ``(x, y)`` pixels on xmask's grid (origin at the top-left corner of the
top-left pixel, :mod:`xmask.geometry.points`), stored as they are in every format, no offset.
Readers return ``N×2 float64`` (NaN kept, as :mod:`xmask.data.points_io` does); sizes are
``(H, W)``; image names are file names as the format records them.

LabelMe (one JSON file per image; 3.x to 5.x)
    ``{"version", "flags", "shapes": [{"label": "head", "points": [[x, y]], "group_id": null,
    "description": "", "shape_type": "point", "flags": {}, "mask": null}, ...], "imagePath",
    "imageData": null, "imageHeight", "imageWidth"}``. Every ``point`` shape is a head, whatever
    its label; other shapes (rectangles, polygons) are left out with a warning. The image is the
    last part of ``imagePath`` (LabelMe writes it relative to the JSON file, ``../images/a.jpg``);
    it is never opened as a path. Written with ``imagePath`` the image's file name: keep the
    JSON beside the image.
CVAT for images 1.1 (one XML file)
    ``<annotations><version>1.1</version><image id name width height><points label="head"
    points="x1,y1;x2,y2" .../></image>...</annotations>``. Every point of every ``<points>``
    element is a head (one element may hold several); boxes, polygons, polylines, tags and
    video tracks are left out. Written: one ``<points>`` element per head, label ``head``.
COCO keypoints (one JSON file)
    ``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations`` (``image_id``,
    ``category_id``, ``keypoints`` ``[x, y, v, ...]``) and ``categories`` with ``keypoints``
    names. One annotation is one head: its keypoint named ``head`` in its category, else its
    first keypoint (``nose`` for COCO persons); ``v == 0`` (not labelled) gives no head.
    Written: :data:`HEAD_CATEGORY`, one annotation per head with ``keypoints`` ``[x, y, 2]``,
    ``num_keypoints`` 1 and a zero-size ``bbox`` at the point.
ShanghaiTech ``.mat`` (one file per image)
    ``image_info{1}{1}.location`` (``N×2``) and ``.number``, as
    :func:`~xmask.data.points_io.read_mat_points` reads it.

Safety: a file over :data:`~xmask.data.points_io.MAX_POINT_FILE_BYTES` is refused before it is
parsed. XML is parsed by the standard library only after refusing any document type
declaration (``<!DOCTYPE``): without one no entity can be declared, so none can expand (the
"billion laughs") or name another file or a URL (external entities); only XML's five built-in
entities and character references remain. An image name in a CVAT or COCO file must be a
relative name inside its folder (:func:`~xmask.data.files.output_stem`), else the file is
refused.
"""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
from scipy.io import savemat

from xmask.data.files import atomic_write_bytes, output_stem
from xmask.data.image_io import max_image_pixels
from xmask.data.points_io import (
    json_points,
    read_csv_points,
    read_json,
    read_mat_points,
    read_text,
    read_txt_points,
)
from xmask.errors import DataError

log = logging.getLogger(__name__)

HEAD_CATEGORY: dict[str, Any] = {
    "id": 1,
    "name": "head",
    "supercategory": "person",
    "keypoints": ["head"],
    "skeleton": [],
}
"""The one category of the COCO files xmask writes (head points, and head masks)."""

LABEL = "head"
"""The label of the points written to LabelMe and CVAT files."""

LABELME_VERSION = "5.5.0"
"""The LabelMe version whose schema the files written follow."""


class ImagePoints(NamedTuple):
    """The head points of one image.

    Attributes:
        points: ``N×2`` ``(x, y)`` pixels (float64 as read).
        size: ``(H, W)`` of the image, or None where the format does not record it.
    """

    points: np.ndarray
    size: tuple[int, int] | None


PointSet = dict[str, ImagePoints]
"""Image file name → its points, in file order."""


def _points(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _id(value: object) -> int | str | None:
    """A COCO id (an integer or a string), or None for anything else."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _image_size(height: object, width: object, path: Path, image: str) -> tuple[int, int]:
    """``(H, W)`` from recorded values (numbers or decimal strings), checked."""
    try:
        h, w = int(str(height)), int(str(width))
    except ValueError as err:
        raise DataError(path, f"image {image!r}: height and width must be integers") from err
    if h < 1 or w < 1 or h * w > max_image_pixels():
        raise DataError(path, f"image {image!r}: size {w}×{h} is empty or over the pixel limit")
    return h, w


def _checked_name(name: object, path: Path) -> str:
    """An image name of a CVAT or COCO file, refused unless a relative name in its folder."""
    if not isinstance(name, str):
        raise DataError(path, f"image name {name!r} is not a string")
    try:
        output_stem(name)
    except DataError as err:
        raise DataError(path, f"image {name!r}: {err.problem}") from err
    return name


def _add(images: PointSet, name: str, entry: ImagePoints, path: Path) -> None:
    if name in images:
        raise DataError(path, f"image {name!r} appears twice")
    images[name] = entry


# LabelMe ---------------------------------------------------------------------------------------


def is_labelme(content: object) -> bool:
    """The parsed JSON is a LabelMe file (an object with a ``shapes`` list)."""
    return isinstance(content, dict) and isinstance(content.get("shapes"), list)


def labelme_points(content: Mapping[str, Any], path: Path) -> tuple[str, ImagePoints]:
    """``(image name, points)`` of a parsed LabelMe file (module docstring).

    The name is ``imagePath``'s last part, or ``path``'s stem when it is empty.
    """
    rows, other = [], 0
    for number, shape in enumerate(content["shapes"]):
        if not isinstance(shape, dict) or shape.get("shape_type", "polygon") != "point":
            other += 1
            continue
        xy = shape.get("points")
        if not (isinstance(xy, list) and len(xy) == 1 and isinstance(xy[0], list)):
            raise DataError(path, f"shapes[{number}]: a point shape needs 'points': [[x, y]]")
        if len(xy[0]) != 2 or not all(_is_number(v) for v in xy[0]):
            raise DataError(path, f"shapes[{number}]: point {xy[0]!r} is not [x, y]")
        rows.append(xy[0])
    if other:
        log.warning("%s: %d shape(s) that are not points left out", path, other)
    image_path = content.get("imagePath")
    name = PurePosixPath(str(image_path or "").replace("\\", "/")).name or path.stem
    h, w = content.get("imageHeight"), content.get("imageWidth")
    size = None if h is None or w is None else _image_size(h, w, path, name)
    return name, ImagePoints(_points(rows), size)


def labelme_dict(name: str, points: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """A LabelMe 5.x file of one image: one point shape labelled ``head`` per point."""
    shapes = [
        {
            "label": LABEL,
            "points": [[float(x), float(y)]],
            "group_id": None,
            "description": "",
            "shape_type": "point",
            "flags": {},
            "mask": None,
        }
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ]
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": PurePosixPath(name).name,
        "imageData": None,
        "imageHeight": size[0],
        "imageWidth": size[1],
    }


# CVAT for images 1.1 ---------------------------------------------------------------------------


def _cvat_points(text: str | None, path: Path, image: str) -> list[list[float]]:
    try:
        rows = [[float(v) for v in pair.split(",")] for pair in (text or "").split(";")]
    except ValueError as err:
        raise DataError(path, f"image {image!r}: bad points {text!r} ({err})") from err
    if any(len(row) != 2 for row in rows):
        raise DataError(path, f"image {image!r}: points must be 'x1,y1;x2,y2;...', got {text!r}")
    return rows


def read_cvat(path: str | Path) -> PointSet:
    """The points of every image of a CVAT for images 1.1 XML file (module docstring).

    Raises:
        DataError: a file too large, not UTF-8, with a document type declaration, invalid XML,
            not CVAT's ``<annotations>``, or an image without a valid name or size.
    """
    path = Path(path)
    text = read_text(path)
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise DataError(path, "XML with a document type declaration is refused (entities)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise DataError(path, f"invalid XML ({err})") from err
    if root.tag != "annotations":
        raise DataError(path, f"not a CVAT for images file: <{root.tag}>, not <annotations>")
    images: PointSet = {}
    for element in root.iter("image"):
        name = _checked_name(element.get("name"), path)
        size = _image_size(element.get("height"), element.get("width"), path, name)
        rows = [
            row for p in element.iter("points") for row in _cvat_points(p.get("points"), path, name)
        ]
        _add(images, name, ImagePoints(_points(rows), size), path)
    if root.find("track") is not None:
        log.warning("%s: video tracks left out (export 'CVAT for images')", path)
    return images


def cvat_xml(images: Mapping[str, ImagePoints]) -> bytes:
    """A CVAT for images 1.1 file of ``images`` (each with its size); UTF-8 bytes."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    label = ET.SubElement(labels, "label")
    ET.SubElement(label, "name").text = LABEL
    ET.SubElement(label, "type").text = "points"
    for number, (name, (points, size)) in enumerate(images.items()):
        assert size is not None, name
        attributes = {
            "id": str(number),
            "name": name,
            "width": str(size[1]),
            "height": str(size[0]),
        }
        image = ET.SubElement(root, "image", attributes)
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            ET.SubElement(
                image,
                "points",
                {
                    "label": LABEL,
                    "source": "manual",
                    "occluded": "0",
                    "points": f"{x:.3f},{y:.3f}",
                    "z_order": "0",
                },
            )
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# COCO keypoints --------------------------------------------------------------------------------


def is_coco(content: object) -> bool:
    """The parsed JSON is a COCO file (an object with ``images`` and ``annotations`` lists)."""
    return (
        isinstance(content, dict)
        and isinstance(content.get("images"), list)
        and isinstance(content.get("annotations"), list)
    )


def _head_keypoint(categories: object) -> dict[int | str | None, int]:
    """Category id → index of its ``head`` keypoint (0 when it names none)."""
    index: dict[int | str | None, int] = {}
    for category in categories if isinstance(categories, list) else []:
        if isinstance(category, dict):
            names = category.get("keypoints")
            names = names if isinstance(names, list) else []
            index[_id(category.get("id"))] = names.index(LABEL) if LABEL in names else 0
    return index


def _coco_images(content: Mapping[str, Any], path: Path) -> dict[object, str]:
    names: dict[object, str] = {}
    for number, entry in enumerate(content["images"]):
        if not isinstance(entry, dict) or _id(entry.get("id")) is None:
            raise DataError(path, f"images[{number}] is not an object with an integer 'id'")
        if entry["id"] in names:
            raise DataError(path, f"image id {entry['id']!r} appears twice")
        names[entry["id"]] = _checked_name(entry.get("file_name"), path)
    return names


def coco_points(content: Mapping[str, Any], path: Path) -> PointSet:
    """The points of every image of a parsed COCO keypoints file (module docstring).

    Raises:
        DataError: an image without an id, a safe name or a size; an annotation of an unknown
            image or whose head keypoint is not numeric.
    """
    names = _coco_images(content, path)
    head = _head_keypoint(content.get("categories"))
    rows: dict[object, list[list[float]]] = {image_id: [] for image_id in names}
    missing = 0
    for number, ann in enumerate(content["annotations"]):
        if not isinstance(ann, dict) or _id(ann.get("image_id")) not in names:
            raise DataError(path, f"annotations[{number}]: not an object of a listed image")
        keypoints, k = ann.get("keypoints"), 3 * head.get(_id(ann.get("category_id")), 0)
        if not (isinstance(keypoints, list) and len(keypoints) >= k + 3):
            missing += 1
            continue
        x, y, v = keypoints[k : k + 3]
        if not (_is_number(x) and _is_number(y) and _is_number(v)):
            raise DataError(path, f"annotations[{number}]: keypoint {[x, y, v]} is not numeric")
        if v > 0:
            rows[ann["image_id"]].append([x, y])
    if missing:
        log.warning("%s: %d annotation(s) without a head keypoint left out", path, missing)
    images: PointSet = {}
    for entry in content["images"]:
        name = names[entry["id"]]
        size = _image_size(entry.get("height"), entry.get("width"), path, name)
        _add(images, name, ImagePoints(_points(rows[entry["id"]]), size), path)
    return images


def coco_keypoints(images: Mapping[str, ImagePoints]) -> dict[str, Any]:
    """A COCO keypoints dict of ``images`` (each with its size): one annotation per head."""
    entries, annotations = [], []
    for image_id, (name, (points, size)) in enumerate(images.items(), start=1):
        assert size is not None, name
        entries.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": HEAD_CATEGORY["id"],
                    "keypoints": [float(x), float(y), 2],
                    "num_keypoints": 1,
                    "bbox": [float(x), float(y), 0.0, 0.0],
                    "area": 0.0,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "xmask head points", "version": "1.0"},
        "licenses": [],
        "images": entries,
        "annotations": annotations,
        "categories": [dict(HEAD_CATEGORY)],
    }


# ShanghaiTech .mat -----------------------------------------------------------------------------


def mat_bytes(points: np.ndarray) -> bytes:
    """A ShanghaiTech ground-truth ``.mat`` file (``image_info``) of ``N×2`` ``(x, y)`` points."""
    location = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    struct = np.empty((1, 1), dtype=[("location", object), ("number", object)])
    struct[0, 0] = (location, np.array([[float(len(location))]]))
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    buffer = io.BytesIO()
    savemat(buffer, {"image_info": cell})
    return buffer.getvalue()


def write_mat(path: str | Path, points: np.ndarray) -> None:
    """Write :func:`mat_bytes` atomically."""
    atomic_write_bytes(path, mat_bytes(points))


# Any point file --------------------------------------------------------------------------------


def read_point_file(path: str | Path) -> PointSet:
    """The points in any point file xmask reads, its format told by suffix and content.

    ``.xml``: CVAT; ``.csv``: ``image,x,y``; ``.json``: LabelMe, COCO or xmask's own JSON;
    ``.txt`` and ``.mat``: one image, named by the file's stem (no size recorded).

    Raises:
        DataError: an unknown suffix, or a file its reader refuses.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_cvat(path)
    if suffix == ".csv":
        return {name: ImagePoints(p, None) for name, p in read_csv_points(path).items()}
    if suffix == ".json":
        content = read_json(path)
        if is_coco(content):
            return coco_points(content, path)  # type: ignore[arg-type]
        if is_labelme(content):
            return dict([labelme_points(content, path)])  # type: ignore[arg-type]
        return {path.stem: ImagePoints(json_points(content, path), None)}
    if suffix in (".txt", ".mat"):
        return {path.stem: ImagePoints(read_image_points(path), None)}
    raise DataError(path, "unknown point format (expected .txt, .json, .csv, .xml or .mat)")


def read_image_points(path: str | Path) -> np.ndarray:
    """The raw ``N×2 float64`` points of one image's file: ``.txt``, ``.mat``, or ``.json``
    (LabelMe or xmask's own, told by content).

    Raises:
        DataError: a file its reader refuses, or a COCO file (many images) given for one image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return read_mat_points(path)
    if suffix != ".json":
        return read_txt_points(path)
    content = read_json(path)
    if is_labelme(content):
        return labelme_points(content, path)[1].points  # type: ignore[arg-type]
    if is_coco(content):
        raise DataError(path, "a COCO file of many images: name it annotations.json")
    return json_points(content, path)
