"""Drawing instance masks: colours per instance, head dots, the region outline and the count
caption (predictions, annotation previews), counting lines, a colour picture of a label map,
and head-density heatmaps (points splatted into a grid, smoothed with a Gaussian, colour-mapped
over the image)."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

DOT_COLOUR = (255, 32, 32)
"""Colour of the head-point dots of :meth:`Prediction.overlay`."""


ROI_COLOUR = (255, 220, 0)
"""Colour of the region outline of :meth:`Prediction.overlay`."""

LINE_COLOUR = (0, 230, 255)
"""Colour of the counting lines drawn on annotated videos and streams."""


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


def draw_lines(image: np.ndarray, ends: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """``image`` (a copy, ``H×W×3 uint8``) with each segment of ``ends`` (``2×2`` ``(x, y)``
    pixels) drawn, a dot at its start, and its label written beside its end."""
    canvas = PIL.Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    scale = max(1, round(min(image.shape[:2]) / 400))
    font = ImageFont.load_default(size=10 * scale)
    for segment, label in zip(ends, labels, strict=True):
        (x0, y0), (x1, y1) = segment.tolist()
        draw.line((x0, y0, x1, y1), fill=LINE_COLOUR, width=2 * scale)
        r = 2 * scale
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=LINE_COLOUR)
        draw.text((x1 + r, y1 + r), label, fill=LINE_COLOUR, font=font)
    return np.asarray(canvas)


HEAT_CELLS = 1024
"""Longest side of the grid head points are splatted into before smoothing (a heatmap costs
the same for any image size or number of heads, up to its final resize)."""

HEAT_ALPHA = 0.75
"""Opacity of the heatmap colour where the density peaks."""

HEAT_COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)
"""The colour map from no density to the peak (evenly spaced anchors, like matplotlib's
``inferno``: dark purple → red → orange → pale yellow)."""


def heatmap_sigma(size: tuple[int, int], sigma: float | None = None) -> float:
    """The Gaussian's standard deviation in pixels: ``sigma``, or by default 1 % of the
    image's longer side, at least 2 px."""
    return float(sigma) if sigma is not None else max(2.0, 0.01 * max(size))


class DensityGrid:
    """Head points of an ``H×W`` image (or of every frame of a video) accumulated in a coarse
    grid, then smoothed with a Gaussian (:meth:`density`).

    Args:
        size: ``(H, W)`` of the image.
        sigma: the Gaussian's standard deviation in image pixels (:func:`heatmap_sigma`).
    """

    def __init__(self, size: tuple[int, int], sigma: float) -> None:
        self.size = size
        self.step = max(1.0, max(size) / HEAT_CELLS)
        self.shape = (math.ceil(size[0] / self.step), math.ceil(size[1] / self.step))
        self.sigma = sigma
        self.counts = np.zeros(self.shape[0] * self.shape[1], dtype=np.float64)

    def add(self, points: np.ndarray) -> None:
        """Add ``N×2`` ``(x, y)`` pixel points (each adds 1 to its grid cell)."""
        if len(points) == 0:
            return
        cells = np.floor(np.asarray(points, dtype=np.float64) / self.step).astype(np.int64)
        cols = np.clip(cells[:, 0], 0, self.shape[1] - 1)
        rows = np.clip(cells[:, 1], 0, self.shape[0] - 1)
        self.counts += np.bincount(rows * self.shape[1] + cols, minlength=self.counts.size)

    def density(self) -> np.ndarray:
        """``H×W float32`` in ``[0, 1]``: the smoothed counts over their peak (all 0 without
        points), resized to the image bilinearly."""
        grid = self.counts.reshape(self.shape)
        smooth = gaussian_filter(grid, self.sigma / self.step, mode="constant")
        peak = smooth.max()
        scaled = (smooth / peak if peak > 0 else smooth).astype(np.float32)
        picture = PIL.Image.fromarray(scaled)
        resized = picture.resize((self.size[1], self.size[0]), PIL.Image.Resampling.BILINEAR)
        return np.clip(np.asarray(resized), 0.0, 1.0)


def heatmap_picture(image: np.ndarray, density: np.ndarray) -> np.ndarray:
    """``H×W×3 uint8``: ``image`` in grey at half brightness with the colour of
    :data:`HEAT_COLOURS` for ``density`` (``H×W`` in ``[0, 1]``) blended over it, at opacity
    :data:`HEAT_ALPHA` × √density (so where there are no heads the dimmed image shows)."""
    out = np.empty((*image.shape[:2], 3), dtype=np.uint8)
    anchors = np.linspace(0.0, 1.0, len(HEAT_COLOURS))
    for top in range(0, image.shape[0], ROWS):  # in blocks of rows: memory of a block
        heat = density[top : top + ROWS]
        grey = 0.5 * image[top : top + ROWS].astype(np.float32).mean(axis=2, keepdims=True)
        colour = np.stack([np.interp(heat, anchors, c) for c in HEAT_COLOURS.T], axis=-1)
        alpha = HEAT_ALPHA * np.sqrt(heat)[..., None]
        mixed = (1.0 - alpha) * grey + alpha * colour
        out[top : top + ROWS] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out
