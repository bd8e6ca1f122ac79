"""COCO instance annotations with RLE masks: the export half of the correction round trip, and
the file format both halves share (:mod:`xmask.annotate.coco_import` reads files back).

Export (:func:`label_maps_to_coco`, :func:`write_coco`)
    COCO 1.0 JSON: ``info``, ``licenses``, ``images`` (``id``, ``file_name``, ``height``,
    ``width``), ``annotations`` and ``categories``. One category, ``{"id": 1, "name": "head",
    "supercategory": "person", "keypoints": ["head"], "skeleton": []}``: the masks are head
    regions (EDP-SAM masks are bounded by the head's exclusion circle), and the keypoints entry
    makes the file a valid COCO keypoints file too. One annotation per head, in point order:

    - ``id`` running over the file (1-based), ``image_id``, ``category_id`` 1, ``iscrowd`` 0;
    - ``segmentation``: standard compressed RLE ``{"size": [H, W], "counts": str}`` made by
      pycocotools (column-major runs, LEB128-like string);
    - ``area`` (pixels) and ``bbox`` ``[x, y, w, h]`` of the mask, as pycocotools computes them
      (``[0, 0, 0, 0]`` when empty);
    - ``keypoints`` ``[x, y, 2]`` (the head point in the pixel grid of :mod:`xmask.geometry`,
      the float32 value written exactly) and ``num_keypoints`` 1;
    - ``attributes`` ``{"xmask_head": k}``: the head's 1-based index in the point file (= its
      label). CVAT keeps per-annotation ``attributes`` through its COCO import/export when the
      label declares an attribute of that name.

    A head whose mask is empty still gets an annotation (an RLE of zeros, area 0), so its point
    survives the round trip.

    CVAT ("COCO 1.0" or "COCO Keypoints 1.0") reads compressed RLE for any ``iscrowd``
    (Datumaro's COCO reader); Label Studio's COCO converter reads boxes, polygons and
    keypoints, not RLE masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from xmask.data.files import atomic_write_bytes
from xmask.data.point_formats import HEAD_CATEGORY
from xmask.errors import DataError

log = logging.getLogger(__name__)


OverlapRule = Literal["nearest", "error"]


HEAD_ATTRIBUTE = "xmask_head"
"""Name of the per-annotation attribute holding the head's 1-based index."""


CATEGORY = HEAD_CATEGORY
"""The single category of every exported annotation (that of the point formats' COCO files)."""


class AnnotationError(DataError):
    """A COCO file holds an annotation xmask cannot use.

    Attributes:
        image: the image, as ``"'NAME' (id N)"`` or ``"id N"``, or None.
        annotation: the annotation id, or None.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        image: str | None = None,
        annotation: object = None,
    ) -> None:
        self.image = image
        self.annotation = annotation
        where = [f"image {image}"] if image is not None else []
        where += [f"annotation {annotation}"] if annotation is not None else []
        super().__init__(path, f"{', '.join(where)}: {problem}" if where else problem)


class ImageRecord(NamedTuple):
    """One image to export.

    Attributes:
        file_name: the image file name (the COCO ``file_name``).
        points: ``N×2`` ``(x, y)`` head points.
        labels: ``H×W`` integer instance label map (0 background, ``k`` = ``points[k − 1]``).
    """

    file_name: str
    points: np.ndarray
    labels: np.ndarray


class LabeledImage(NamedTuple):
    """One imported image.

    Attributes:
        points: ``N×2 float32`` ``(x, y)`` head points, in label order.
        labels: ``H×W int32`` instance label map (0 background, ``k`` = ``points[k − 1]``).
    """

    points: np.ndarray
    labels: np.ndarray


def _runs_from_pixels(pixels: np.ndarray, total: int) -> list[int]:
    """Uncompressed COCO counts of a mask given its ascending column-major pixel indices."""
    if len(pixels) == 0:
        return [total]
    breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
    starts = pixels[np.concatenate([[0], breaks])]
    ends = pixels[np.concatenate([breaks - 1, [len(pixels) - 1]])] + 1
    counts = np.empty(2 * len(starts), dtype=np.int64)
    counts[0::2] = starts - np.concatenate([[0], ends[:-1]])
    counts[1::2] = ends - starts
    tail = total - int(ends[-1])
    return counts.tolist() + ([tail] if tail else [])


def pixels_from_runs(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Row-major flat indices ``y·W + x`` of the foreground of uncompressed COCO counts."""
    h, w = size
    starts = np.cumsum(counts) - counts
    first, length = starts[1::2], counts[1::2]
    before = np.cumsum(length) - length
    column_major = np.repeat(first - before, length) + np.arange(int(length.sum()))
    return (column_major % h) * w + column_major // h


def counts_from_string(text: str) -> list[int]:
    """Decode the counts of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    value, shift = 0, 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"character {char!r} is not in the RLE alphabet")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # sign extension of the last 5-bit group
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("the RLE string ends inside a number")
    return counts


def _check_record(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(record.labels)
    points = np.asarray(record.points, dtype=np.float32).reshape(-1, 2)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{record.file_name}: label map must be H×W integer, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > len(points)):
        raise ValueError(
            f"{record.file_name}: labels must lie in [0, {len(points)}] (one per point), "
            f"got [{labels.min()}, {labels.max()}]"
        )
    if not np.isfinite(points).all():
        raise ValueError(f"{record.file_name}: points must be finite")
    return labels, points


def _pixels_by_label(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column-major foreground pixel indices grouped by label, ascending within each group, and
    ``N+1`` offsets: the pixels of label ``k`` are ``pixels[offsets[k−1]:offsets[k]]``."""
    flat = labels.ravel(order="F")
    foreground = np.flatnonzero(flat)
    pixels = foreground[np.argsort(flat[foreground], kind="stable")]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(flat[foreground], minlength=n + 1)[1 : n + 1])
    return pixels, offsets


def _bbox(pixels: np.ndarray, h: int) -> list[float]:
    """``[x, y, w, h]`` of a mask given its ascending column-major pixel indices."""
    if len(pixels) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    rows = pixels % h
    x0, x1 = int(pixels[0]) // h, int(pixels[-1]) // h
    y0, y1 = int(rows.min()), int(rows.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def _annotation(
    ann_id: int,
    image_id: int,
    head: int,
    point: np.ndarray,
    pixels: np.ndarray,
    size: tuple[int, int],
) -> dict[str, Any]:
    h, w = size
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": _runs_from_pixels(pixels, h * w)}, h, w)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY["id"],
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "area": len(pixels),
        "bbox": _bbox(pixels, h),
        "iscrowd": 0,
        "keypoints": [float(point[0]), float(point[1]), 2],
        "num_keypoints": 1,
        "attributes": {HEAD_ATTRIBUTE: head},
    }


def label_maps_to_coco(
    records: Iterable[ImageRecord], description: str = "xmask head masks"
) -> dict[str, Any]:
    """COCO instances (compressed RLE, head points as keypoints) of instance label maps.

    Args:
        records: images in the order their ``id`` (1-based) is given; each with ``N×2``
            ``(x, y)`` points and an ``H×W`` label map whose labels lie in ``[0, N]``.
        description: the ``info.description`` field.

    Returns:
        A JSON-serialisable COCO dict (module docstring), one annotation per head, empty masks
        included.

    Raises:
        ValueError: a label map that is not ``H×W`` integer, labels outside ``[0, N]``, or
            non-finite points.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, record in enumerate(records, start=1):
        labels, points = _check_record(record)
        size = (int(labels.shape[0]), int(labels.shape[1]))
        images.append(
            {"id": image_id, "file_name": record.file_name, "height": size[0], "width": size[1]}
        )
        pixels, offsets = _pixels_by_label(labels, len(points))
        for head in range(1, len(points) + 1):
            own = pixels[offsets[head - 1] : offsets[head]]
            annotations.append(
                _annotation(len(annotations) + 1, image_id, head, points[head - 1], own, size)
            )
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(CATEGORY)],
    }


def write_coco(path: str | Path, coco: Mapping[str, Any]) -> None:
    """Write a COCO dict as compact UTF-8 JSON, atomically."""
    atomic_write_bytes(path, json.dumps(coco, separators=(",", ":")).encode("utf-8"))


def read_coco(path: str | Path) -> dict[str, Any]:
    """Read a COCO JSON file.

    Raises:
        DataError: missing file, invalid JSON (with line and column), not a JSON object, or no
            ``images`` / ``annotations`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "COCO file not found")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        problem = f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        raise DataError(path, problem) from err
    except RecursionError as err:
        raise DataError(path, "invalid JSON: nested too deeply") from err
    if not isinstance(coco, dict):
        raise DataError(path, "a COCO file must hold a JSON object")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(path, f"no '{key}' list")
    return coco
