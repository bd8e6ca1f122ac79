"""COCO files back into label maps: the import half of the correction round trip
(:mod:`xmask.annotate.coco` writes them).

Import (:func:`~xmask.annotate.coco.read_coco`, :func:`coco_to_label_maps`)
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

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from xmask.annotate.coco import (
    HEAD_ATTRIBUTE,
    AnnotationError,
    LabeledImage,
    OverlapRule,
    counts_from_string,
    pixels_from_runs,
)
from xmask.data.image_io import max_image_pixels

log = logging.getLogger(__name__)


class _Image(NamedTuple):
    id: int
    name: str
    size: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.name!r} (id {self.id})"


class _Head(NamedTuple):
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
        if h * w > max_image_pixels():
            raise AnnotationError(
                source,
                f"size of {h * w} pixels is over the image limit of {max_image_pixels():,} "
                "(--max-image-pixels)",
                image=image.label,
            )
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
        counts = counts_from_string(counts)
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
    return np.asarray(counts_from_string(rle["counts"].decode("ascii")), dtype=np.int64)


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
    return pixels_from_runs(counts, image.size)


def _parse_head(ann: Mapping[str, Any], image: _Image, source: str | Path) -> _Head:
    try:
        point = _head_point(ann, image)
        head = _head_index(ann)
        pixels = _mask_pixels(ann, image)
    except (ValueError, OverflowError) as err:
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
