"""Regions of interest: count and segment only the heads inside a polygon.

A region is a simple polygon of ``K >= 3`` vertices in image pixels, ``(x, y)`` order, as
``"x1,y1 x2,y2 x3,y3 ..."`` on the command line or in a file: that text, a JSON list of
``[x, y]`` pairs, or a JSON object with a ``"roi"`` (or ``"points"``) list. A head is inside
when the centre of the pixel holding its point is inside the polygon (even-odd rule, the
rule scikit-image rasterises polygons with: :func:`in_polygon` and :func:`polygon_mask` agree);
its mask is clipped to the polygon. Named zones (:mod:`xmask.apps.zones`) use the same rule.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage.draw import polygon2mask
from skimage.measure import points_in_poly

from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction


def parse_polygon(text: str) -> np.ndarray:
    """``K×2 float64`` ``(x, y)`` vertices of ``"x1,y1 x2,y2 ..."`` or of a JSON list of pairs.

    Raises:
        UsageError: not numbers, odd coordinates, fewer than 3 vertices, or not finite.
    """
    stripped = text.strip()
    label = f"region {text[:60]!r}"
    try:
        if stripped.startswith(("[", "{")):
            content = json.loads(stripped)
            if isinstance(content, dict):
                content = content.get("roi", content.get("points"))
        else:
            content = [p.split(",") for p in stripped.replace(";", " ").split()]
    except ValueError as err:
        raise UsageError(f"{label}: expected 'x1,y1 x2,y2 x3,y3 ...' ({err})") from err
    return polygon_vertices(content, label)


def polygon_vertices(content: object, label: str) -> np.ndarray:
    """``K×2 float64`` ``(x, y)`` vertices of a list of ``[x, y]`` pairs.

    Raises:
        UsageError: (starting with ``label``) not numbers, not pairs, fewer than 3 vertices, or
            not finite.
    """
    try:
        vertices = np.asarray(content, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{label}: expected a list of [x, y] numbers ({err})") from err
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise UsageError(f"{label}: needs at least 3 (x, y) vertices")
    if not np.isfinite(vertices).all():
        raise UsageError(f"{label}: vertices must be finite")
    return vertices


def read_polygon(spec: str) -> np.ndarray:
    """A polygon given inline or as a file holding the same text (module docstring).

    Raises:
        DataError: an unreadable file.
        UsageError: a bad polygon.
    """
    path = Path(spec).expanduser()
    if not path.is_file():
        return parse_polygon(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"unreadable region file ({err})") from err
    try:
        return parse_polygon(text)
    except UsageError as err:
        raise DataError(path, str(err)) from err


def polygon_mask(vertices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H×W bool``: pixels whose centre lies inside the polygon.

    Raises:
        UsageError: the polygon covers no pixel of the image.
    """

    rows_cols = np.stack([vertices[:, 1] - 0.5, vertices[:, 0] - 0.5], axis=1)
    mask = polygon2mask(size, rows_cols)
    if not mask.any():
        raise UsageError(f"the region covers no pixel of the {size[1]}×{size[0]} image")
    return mask


def in_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """``N bool``: whether the centre of the pixel holding each point lies inside the polygon
    (even-odd rule; the pixels of :func:`polygon_mask` hold exactly the points inside).

    Args:
        points: ``N×2`` ``(x, y)`` pixels.
        vertices: ``K×2`` ``(x, y)`` polygon vertices.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    centres = np.floor(np.asarray(points, dtype=np.float64)) + 0.5
    return points_in_poly(centres, np.asarray(vertices, dtype=np.float64))


def restrict(prediction: Prediction, vertices: np.ndarray) -> Prediction:
    """The heads of ``prediction`` inside the polygon, relabelled ``1..n`` in their order, with
    masks clipped to it; ``count`` becomes the number of heads inside.

    Raises:
        UsageError: the polygon covers no pixel of the image.
    """
    inside = polygon_mask(vertices, prediction.size)
    pts = prediction.points
    keep = in_polygon(pts, vertices)
    labels = areas = None
    if prediction.labels is not None:
        new_label = np.zeros(len(pts) + 1, dtype=np.int32)
        new_label[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = np.where(inside, new_label[prediction.labels], 0).astype(np.int32)
        areas = np.bincount(labels.ravel(), minlength=int(keep.sum()) + 1)[1:].astype(np.int64)
    return replace(
        prediction,
        count=int(keep.sum()),
        points=pts[keep],
        scores=prediction.scores[keep],
        labels=labels,
        areas=areas,
        roi=vertices,
    )
