"""Regions of interest: count and segment only the heads inside a polygon.

A region is a simple polygon of ``K >= 3`` vertices in image pixels, ``(x, y)`` order, as
``"x1,y1 x2,y2 x3,y3 ..."`` on the command line or in a file: that text, a JSON list of
``[x, y]`` pairs, or a JSON object with a ``"roi"`` (or ``"points"``) list. A head is inside
when the pixel holding its point is inside the rasterised polygon (pixel centres, scikit-image's
rule); its mask is clipped to the polygon.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage.draw import polygon2mask

from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction


def parse_polygon(text: str) -> np.ndarray:
    """``K×2 float64`` ``(x, y)`` vertices of ``"x1,y1 x2,y2 ..."`` or of a JSON list of pairs.

    Raises:
        UsageError: not numbers, odd coordinates, fewer than 3 vertices, or not finite.
    """
    stripped = text.strip()
    try:
        if stripped.startswith(("[", "{")):
            content = json.loads(stripped)
            if isinstance(content, dict):
                content = content.get("roi", content.get("points"))
            vertices = np.asarray(content, dtype=np.float64)
        else:
            pairs = stripped.replace(";", " ").split()
            vertices = np.asarray([p.split(",") for p in pairs], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise UsageError(f"region {text[:60]!r}: expected 'x1,y1 x2,y2 x3,y3 ...' ({err})") from err
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise UsageError(f"region {text[:60]!r}: needs at least 3 (x, y) vertices")
    if not np.isfinite(vertices).all():
        raise UsageError(f"region {text[:60]!r}: vertices must be finite")
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


def restrict(prediction: Prediction, vertices: np.ndarray) -> Prediction:
    """The heads of ``prediction`` inside the polygon, relabelled ``1..n`` in their order, with
    masks clipped to it; ``count`` becomes the number of heads inside.

    Raises:
        UsageError: the polygon covers no pixel of the image.
    """
    inside = polygon_mask(vertices, prediction.size)
    pts = prediction.points
    cols = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, prediction.size[1] - 1)
    rows = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, prediction.size[0] - 1)
    keep = inside[rows, cols]
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
