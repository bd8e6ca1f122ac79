"""Drawing instance masks: colours per instance, head dots, the region outline and the count
caption (predictions, annotation previews), and a colour picture of a label map."""

from __future__ import annotations

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

DOT_COLOUR = (255, 32, 32)
"""Colour of the head-point dots of :meth:`Prediction.overlay`."""


ROI_COLOUR = (255, 220, 0)
"""Colour of the region outline of :meth:`Prediction.overlay`."""


def instance_colours(n: int, seed: int = 0) -> np.ndarray:
    """``n×3 float32`` bright colours (channels in ``[64, 255]``), the same for every call."""
    return np.random.default_rng(seed).integers(64, 256, (n, 3)).astype(np.float32)


def draw_dots(image: np.ndarray, points: np.ndarray, radius: int, colour: tuple[int, ...]) -> None:
    """Paint a filled disc of ``radius`` px around each ``(x, y)`` point, in place.

    Args:
        image: ``H×W×3 uint8``.
        points: ``N×2`` ``(x, y)`` pixels.
        radius: disc radius (0: nothing drawn).
        colour: RGB.
    """
    if radius <= 0 or len(points) == 0:
        return
    h, w = image.shape[:2]
    span = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    disc = dx * dx + dy * dy <= radius * radius
    cols = np.floor(points[:, 0]).astype(np.int64)[:, None] + dx[disc][None]
    rows = np.floor(points[:, 1]).astype(np.int64)[:, None] + dy[disc][None]
    ok = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    image[rows[ok], cols[ok]] = colour


ROWS = 256
"""Rows drawn at a time (large images)."""


def tint_instances(image: np.ndarray, labels: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """``image`` (a copy) with a translucent colour per instance of ``labels`` (``H×W``, 0
    background, ``k`` = instance ``k`` of ``n``)."""
    out = image.copy()
    colours = instance_colours(n)
    for top in range(0, labels.shape[0], ROWS):  # in blocks of rows: memory of a block
        block, part = out[top : top + ROWS], labels[top : top + ROWS]
        inside = part > 0
        mixed = (1.0 - alpha) * block[inside] + alpha * colours[part[inside] - 1]
        block[inside] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def colour_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """``H×W×3 uint8``: a label map as a viewer can show it (a 16-bit map looks black): each
    instance in its colour of :func:`instance_colours`, the background black."""
    picture = np.zeros((*labels.shape, 3), dtype=np.uint8)
    inside = labels > 0
    picture[inside] = instance_colours(n)[labels[inside] - 1].astype(np.uint8)
    return picture


def overlay_picture(
    image: np.ndarray,
    labels: np.ndarray | None,
    points: np.ndarray,
    caption: str | None,
    roi: np.ndarray | None = None,
    alpha: float = 0.5,
    dot_radius: int = 2,
) -> np.ndarray:
    """``image`` (a copy) with a translucent colour per instance of ``labels`` (if any), a dot
    on every ``(x, y)`` head point, the region's outline (if any) and a caption."""
    out = image.copy() if labels is None else tint_instances(image, labels, len(points), alpha)
    draw_dots(out, points, dot_radius, DOT_COLOUR)
    if roi is None and caption is None:
        return out
    return draw_annotations(out, roi, caption)


CAPTION_SHARE = 0.25
"""Most of an image's area a caption box may cover: a smaller font on a small image, no caption
on one too small for any."""


def draw_annotations(image: np.ndarray, roi: np.ndarray | None, text: str | None) -> np.ndarray:
    """``image`` with the region's outline and a caption box in the top-left corner, sized
    to the image and never over :data:`CAPTION_SHARE` of it (a copy, ``H×W×3 uint8``)."""

    canvas = PIL.Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    scale = max(1, round(min(h, w) / 400))
    if roi is not None:
        draw.polygon([tuple(v) for v in roi.tolist()], outline=ROI_COLOUR, width=2 * scale)
    for size in (14 * scale, 10, 8, 6) if text is not None else ():
        pad = max(1, size // 4)
        font = ImageFont.load_default(size=size)
        *_, right, bottom = draw.textbbox((pad, pad // 2), text, font=font)
        box = (right + pad) * (bottom + pad // 2)
        if right + pad <= w and box <= CAPTION_SHARE * h * w:
            draw.rectangle((0, 0, right + pad, bottom + pad // 2), fill=(0, 0, 0))
            draw.text((pad, pad // 2), text, fill=(255, 255, 255), font=font)
            break
    return np.asarray(canvas)
