"""COCO instance annotations with RLE masks: the export / import of the correction round trip.

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

Import (:func:`read_coco`, :func:`coco_to_label_maps`)
    Every annotation is a head; its category is not checked. Accepted segmentations: compressed
    RLE, uncompressed RLE (``counts`` as a list) and polygons (CVAT, Label Studio), rasterised by
    pycocotools. Validation errors (:class:`AnnotationError`) name the file, the image and the
    annotation id: unknown image id, a mask whose size differs from its image or a polygon
    vertex outside the image, RLE counts that do not cover the image, a head without a mask
    (``segmentation`` missing or empty), an annotation without a head point (``keypoints``
    missing or not visible) or with its point outside the image, and two masks on one head.

Head identity
    ``attributes.xmask_head`` when present; otherwise the keypoint ``(x, y)`` (tools that drop
    unknown fields still keep keypoints). Two annotations of one image with the same identity
    are "two masks on one head". (Exact duplicate points, which real datasets contain, are told
    apart by ``xmask_head`` only.) Labels are given in this order: annotations with
    ``xmask_head`` by that index, then the others by annotation id; they are renumbered
    ``1..N``, so an image that lost a head keeps a gapless label map and its points in label
    order.

Overlaps on import
    A corrected file may hold overlapping masks (polygons drawn in CVAT). ``overlap="nearest"``
    (default) gives a pixel claimed by several heads to the head whose point is nearest to the
    pixel centre (ties: the smaller label) and logs how many pixels were contested — never the
    annotation order; ``overlap="error"`` raises, naming both annotations.

Memory is ``O(H·W + Σ mask areas)`` per image: masks are handled as run lengths and pixel
lists, never as one ``H×W`` array per head.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from xmask.data.image_io import atomic_write_bytes
from xmask.errors import DataError

log = logging.getLogger(__name__)

OverlapRule = Literal["nearest", "error"]

HEAD_ATTRIBUTE = "xmask_head"
"""Name of the per-annotation attribute holding the head's 1-based index."""

CATEGORY: dict[str, Any] = {
    "id": 1,
    "name": "head",
    "supercategory": "person",
    "keypoints": ["head"],
    "skeleton": [],
}
"""The single category of every exported annotation."""


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


# ---------------------------------------------------------------------------------------------
# run lengths


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


def _pixels_from_runs(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Row-major flat indices ``y·W + x`` of the foreground of uncompressed COCO counts."""
    h, w = size
    starts = np.cumsum(counts) - counts
    first, length = starts[1::2], counts[1::2]
    before = np.cumsum(length) - length
    column_major = np.repeat(first - before, length) + np.arange(int(length.sum()))
    return (column_major % h) * w + column_major // h


def _counts_from_string(text: str) -> list[int]:
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


# ---------------------------------------------------------------------------------------------
# export


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


# ---------------------------------------------------------------------------------------------
# import


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
    if not isinstance(coco, dict):
        raise DataError(path, "a COCO file must hold a JSON object")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(path, f"no '{key}' list")
    return coco


@dataclass(frozen=True)
class _Image:
    id: int
    name: str
    size: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.name!r} (id {self.id})"


@dataclass(frozen=True)
class _Head:
    """One parsed annotation: id, identity, sort key, ``(x, y)`` point, row-major pixels."""

    ann_id: object
    identity: tuple
    order: tuple
    point: tuple[float, float]
    pixels: np.ndarray


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_images(coco: Mapping[str, Any], source: str | Path) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    names: set[str] = set()
    for number, entry in enumerate(coco.get("images") or []):
        if not isinstance(entry, dict):
            raise AnnotationError(source, f"images[{number}] is not an object")
        image_id, name = entry.get("id"), entry.get("file_name")
        h, w = entry.get("height"), entry.get("width")
        if not (_is_int(image_id) and isinstance(name, str) and _is_int(h) and _is_int(w)):
            raise AnnotationError(
                source, f"images[{number}] needs integer 'id', 'height', 'width' and 'file_name'"
            )
        image = _Image(image_id, name, (h, w))
        if h < 1 or w < 1:
            raise AnnotationError(source, f"size {h}×{w} is empty", image=image.label)
        if image_id in images or name in names:
            raise AnnotationError(source, "the id or file name appears twice", image=image.label)
        images[image_id] = image
        names.add(name)
    return images


def _group_annotations(
    coco: Mapping[str, Any], images: Mapping[int, _Image], source: str | Path
) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[int] = set()
    for number, ann in enumerate(coco.get("annotations") or []):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise AnnotationError(source, f"annotations[{number}] is not an object with an 'id'")
        if ann["id"] in seen:
            raise AnnotationError(source, "the id appears twice", annotation=ann["id"])
        seen.add(ann["id"])
        image_id = ann.get("image_id")
        if image_id not in images:
            raise AnnotationError(
                source,
                "unknown image: no such id in 'images'",
                image=f"id {image_id!r}",
                annotation=ann["id"],
            )
        grouped[image_id].append(ann)
    return grouped


def _head_point(ann: Mapping[str, Any], image: _Image) -> tuple[float, float]:
    keypoints = ann.get("keypoints")
    if not (isinstance(keypoints, list) and len(keypoints) >= 3):
        raise ValueError("no head point ('keypoints' [x, y, v] missing)")
    x, y, v = keypoints[:3]
    if not (_is_number(x) and _is_number(y) and _is_number(v)) or v <= 0:
        raise ValueError(f"no head point (keypoints {keypoints[:3]} not a visible [x, y, v])")
    h, w = image.size
    if not (0 <= x <= w and 0 <= y <= h):
        raise ValueError(f"head point ({x}, {y}) lies outside the {w}×{h} image")
    return float(x), float(y)


def _head_index(ann: Mapping[str, Any]) -> int | None:
    attributes = ann.get("attributes")
    if not isinstance(attributes, dict) or HEAD_ATTRIBUTE not in attributes:
        return None
    head = attributes[HEAD_ATTRIBUTE]
    if not _is_int(head) or head < 1:
        raise ValueError(f"attributes.{HEAD_ATTRIBUTE} must be a positive integer, got {head!r}")
    return head


def _rle_counts(segmentation: Mapping[str, Any], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if segmentation.get("size") != [h, w]:
        raise ValueError(
            f"mask size {segmentation.get('size')} differs from the image ([{h}, {w}]): "
            "the mask lies outside the image"
        )
    counts = segmentation.get("counts")
    if isinstance(counts, str):
        counts = _counts_from_string(counts)
    elif not (isinstance(counts, list) and all(_is_int(c) for c in counts)):
        raise ValueError("RLE 'counts' must be a string or a list of integers")
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE counts cover {counts.sum()} pixels, the image has {h}×{w}")
    return counts


def _polygon_counts(polygons: Sequence[Any], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    for polygon in polygons:
        if not (isinstance(polygon, list) and all(_is_number(v) for v in polygon)):
            raise ValueError("a polygon must be a list of numbers [x1, y1, x2, y2, ...]")
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(
                f"a polygon needs 3 or more (x, y) vertices, got {len(polygon)} values"
            )
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if (xy < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] > h).any():
            raise ValueError(f"a polygon vertex lies outside the {w}×{h} image")
    rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polygons], h, w))
    return np.asarray(_counts_from_string(rle["counts"].decode("ascii")), dtype=np.int64)


def _mask_pixels(ann: Mapping[str, Any], image: _Image) -> np.ndarray:
    segmentation = ann.get("segmentation")
    if not segmentation or segmentation == [[]]:
        raise ValueError("head without a mask ('segmentation' missing or empty)")
    if isinstance(segmentation, dict):
        counts = _rle_counts(segmentation, image.size)
    elif isinstance(segmentation, list):
        counts = _polygon_counts(segmentation, image.size)
    else:
        raise ValueError("'segmentation' must be an RLE object or a list of polygons")
    return _pixels_from_runs(counts, image.size)


def _parse_head(ann: Mapping[str, Any], image: _Image, source: str | Path) -> _Head:
    try:
        point = _head_point(ann, image)
        head = _head_index(ann)
        pixels = _mask_pixels(ann, image)
    except ValueError as err:
        raise AnnotationError(source, str(err), image=image.label, annotation=ann["id"]) from err
    if head is None:
        return _Head(ann["id"], ("point", *point), (1, 0, ann["id"]), point, pixels)
    return _Head(ann["id"], ("head", head), (0, head, ann["id"]), point, pixels)


def _ordered_heads(heads: list[_Head], image: _Image, source: str | Path) -> list[_Head]:
    """Heads in label order; raises when two annotations share one head identity."""
    owner: dict[tuple, _Head] = {}
    for head in heads:
        other = owner.setdefault(head.identity, head)
        if other is not head:
            what = (
                f"head {head.identity[1]}"
                if head.identity[0] == "head"
                else f"the head point {head.point}"
            )
            raise AnnotationError(
                source,
                f"two masks on one head: annotations {other.ann_id} and {head.ann_id} both "
                f"claim {what}",
                image=image.label,
                annotation=head.ann_id,
            )
    return sorted(heads, key=lambda head: head.order)


def _nearest_claim(
    pixels: np.ndarray, label: np.ndarray, points: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel once, with the label whose point is nearest to the pixel centre (ties: the
    smaller label)."""
    dx = pixels % width + 0.5 - points[label - 1, 0]
    dy = pixels // width + 0.5 - points[label - 1, 1]
    order = np.lexsort((label, dx * dx + dy * dy, pixels))
    pixels, label = pixels[order], label[order]
    first = np.concatenate([[True], pixels[1:] != pixels[:-1]])
    return pixels[first], label[first]


def _overlap_error(
    pixel: int, claims: np.ndarray, heads: Sequence[_Head], image: _Image, source: str | Path
) -> AnnotationError:
    """The error for a pixel claimed by the heads of labels ``claims``."""
    a, b = (heads[k - 1].ann_id for k in claims[:2])
    x, y = pixel % image.size[1], pixel // image.size[1]
    return AnnotationError(
        source,
        f"masks overlap: annotations {a} and {b} both claim pixel (x={x}, y={y})",
        image=image.label,
        annotation=b,
    )


def _label_map(
    heads: Sequence[_Head], image: _Image, rule: OverlapRule, source: str | Path
) -> LabeledImage:
    h, w = image.size
    points = np.array([head.point for head in heads], dtype=np.float32).reshape(-1, 2)
    pixels = np.concatenate([head.pixels for head in heads] or [np.zeros(0, np.int64)])
    label = np.repeat(np.arange(1, len(heads) + 1), [len(head.pixels) for head in heads])
    claims = np.bincount(pixels, minlength=h * w)
    contested = np.flatnonzero(claims > 1)
    if len(contested) and rule == "error":
        pixel = int(contested[0])
        raise _overlap_error(pixel, label[pixels == pixel], heads, image, source)
    if len(contested):
        log.warning(
            "%s: image %s: %d pixels claimed by several heads go to the nearest head point",
            source,
            image.label,
            len(contested),
        )
        pixels, label = _nearest_claim(pixels, label, points, w)
    labels = np.zeros(h * w, dtype=np.int32)
    labels[pixels] = label
    return LabeledImage(points=points, labels=labels.reshape(h, w))


def coco_to_label_maps(
    coco: Mapping[str, Any], source: str | Path, overlap: OverlapRule = "nearest"
) -> dict[str, LabeledImage]:
    """Instance label maps and head points of every image of a COCO dict, validated.

    Args:
        coco: a COCO dict (e.g. from :func:`read_coco`), possibly corrected in CVAT or Label
            Studio: compressed or uncompressed RLE or polygons; one annotation per head.
        source: the file it came from, named in errors and warnings.
        overlap: ``"nearest"`` or ``"error"`` for pixels claimed by several heads (module
            docstring).

    Returns:
        ``file_name`` → :class:`LabeledImage` (``N×2 float32`` ``(x, y)`` points in label
        order, ``H×W int32`` label map) for every image, those without annotations included.

    Raises:
        AnnotationError: every problem listed in the module docstring, naming the image and the
            annotation id.
    """
    if overlap not in ("nearest", "error"):
        raise ValueError(f"overlap must be 'nearest' or 'error', got {overlap!r}")
    images = _parse_images(coco, source)
    grouped = _group_annotations(coco, images, source)
    out: dict[str, LabeledImage] = {}
    for image_id, image in images.items():
        heads = [_parse_head(ann, image, source) for ann in grouped.get(image_id, [])]
        out[image.name] = _label_map(_ordered_heads(heads, image, source), image, overlap, source)
    return out
