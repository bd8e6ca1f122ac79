"""Eq. 11–12 for every head of a large image, one window at a time, in bounded memory.

The smoothed embedding ``Ẽ`` of a whole image is ``4·D`` bytes per pixel (1.5 GB for
6000×4000 at ``D = 16``). Every decision of Eq. 11–12 is local, though: the label of a pixel
is the lowest-energy head among those whose NNEC circle covers it, and a head's energy at a
pixel reads ``Ẽ`` there and at the head's point. So the image is cut into square *cores*;
each core is labelled from a *window* around it that holds

- the whole circle of every head that reaches into the core (radii from the whole image, so
  a circle is the same in every window; the co-located-head rule splits whole circles), and
  every other head whose point lies in the window (that rule avoids their point pixels);
- a halo of :data:`HALO` pixels beyond those circles, so that ``Ẽ`` inside it, computed from
  the window's cells alone, equals ``Ẽ`` of the whole image bit for bit (upsampling and the
  Gaussian reach at most ``⌊k/2⌋ + 4`` pixels; windows start on the stride-4 grid).

Each core's pixels are written once, from its own window, so no head is ever counted twice
at a seam; the result equals :func:`xmask.segment.instances.segment_instances` on the whole
image (a test holds them equal). Memory is one window's ``Ẽ`` and circles plus the
``H×W int32`` label map. ``Ẽ`` is computed only where Eq. 11 reads it
(:func:`xmask.segment.instances.read_pixels`: the circles and the pixels around each point),
a tenth to four fifths of a ShanghaiTech image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from xmask.geometry.circles import check_points, circles_of, nnec_radii
from xmask.geometry.labels import connected_masks, resolve_labels
from xmask.segment.instances import (
    INFERENCE,
    Instances,
    SegmentConfig,
    head_energy,
    read_pixels,
    smoothed_for_segmentation,
)

STRIDE = 4
"""Cells of the embedding are ``STRIDE×STRIDE`` pixels."""

HALO = 16
"""Pixels of context beyond a window's heads (``⌊k/2⌋ + 4`` of the default ``k = 7``, rounded
up to the grid); larger smoothing kernels widen it (:func:`halo_for`)."""

CORE = 2048
"""Default core side in pixels: images up to 2048×2048 are one window."""


def halo_for(cfg: SegmentConfig, stride: int = STRIDE) -> int:
    """Context in pixels that makes a window's ``Ẽ`` exact: at least :data:`HALO`, a multiple
    of the stride (pixels per embedding cell)."""
    need = cfg.kernel // 2 + 2 * stride
    return max(HALO, stride * math.ceil(need / stride))


def segment_in_windows(
    embedding: Tensor,
    size: tuple[int, int],
    points: np.ndarray,
    scores: np.ndarray | None = None,
    cfg: SegmentConfig = INFERENCE,
    core: int = CORE,
    buffer: TableBuffer | None = None,
    stride: int = STRIDE,
) -> Instances:
    """Every head of one image segmented window by window (module docstring).

    Args:
        embedding: the stride-4 ``D×h×w`` mask embedding of the whole image.
        size: ``(H, W)`` of the image.
        points: ``N×2`` ``(x, y)`` pixels inside the image.
        scores: ``N`` head probabilities (kept in the result), or None (all 1).
        cfg: the constants of Eq. 11–12 and of the smoothing.
        core: core side in pixels (a positive multiple of ``stride``).
        buffer: where the windows' ``Ẽ`` is written (the predictor keeps one from call to
            call); a fresh one when None.
        stride: pixels per embedding cell along each side: 4 when the pixels are the image's,
            4 / g on a grid of ``g×g``-pixel blocks (:mod:`xmask.segment.grid`).

    Returns:
        :class:`~xmask.segment.instances.Instances` of the whole image.
    """
    if core <= 0 or core % stride:
        raise ValueError(f"core must be a positive multiple of {stride}, got {core}")
    height, width = size
    pts = check_points(points, size)
    n = len(pts)
    radii = nnec_radii(
        pts, size, r_min=cfg.r_min, duplicates="distinct", lone=cfg.lone, size_prior=cfg.size_prior
    )
    labels = np.zeros(size, dtype=np.int32)
    forced = np.zeros(n, dtype=bool)
    halo = halo_for(cfg, stride)
    buffer = TableBuffer() if buffer is None else buffer
    for y0 in range(0, height, core):
        for x0 in range(0, width, core):
            box = (y0, min(y0 + core, height), x0, min(x0 + core, width))
            _label_core(
                embedding, size, pts, radii, box, (halo, stride), cfg, labels, forced, buffer
            )
    if cfg.connected:
        labels, area = connected_masks(labels, pts)
    else:
        area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    given = np.ones(n, dtype=np.float32) if scores is None else np.asarray(scores, np.float32)
    return Instances(labels, pts, given.reshape(n), radii, area, forced)


def _label_core(
    embedding: Tensor,
    size: tuple[int, int],
    pts: np.ndarray,
    radii: np.ndarray,
    box: tuple[int, int, int, int],
    halo_stride: tuple[int, int],
    cfg: SegmentConfig,
    labels: np.ndarray,
    forced: np.ndarray,
    buffer: TableBuffer,
) -> None:
    """Write the labels of core ``box = (y0, y1, x0, x1)`` into ``labels`` (and the heads'
    ``forced`` flags)."""
    y0, y1, x0, x1 = box
    halo, stride = halo_stride
    gap_x = np.maximum(np.maximum(x0 - pts[:, 0], pts[:, 0] - x1), 0.0)
    gap_y = np.maximum(np.maximum(y0 - pts[:, 1], pts[:, 1] - y1), 0.0)
    reaching = np.flatnonzero(gap_x * gap_x + gap_y * gap_y <= (radii + 1.0) ** 2)
    if len(reaching) == 0:
        return
    reach = radii[reaching, None] + 1.0
    low = np.minimum((pts[reaching] - reach).min(axis=0), (x0, y0)) - halo
    high = np.maximum((pts[reaching] + reach).max(axis=0), (x1, y1)) + halo
    wx0, wy0 = (stride * np.floor(np.maximum(low, 0.0) / stride)).astype(int)
    wx1, wy1 = (int(v) for v in np.minimum(np.ceil(high / stride) * stride, (size[1], size[0])))
    inside = (pts[:, 0] >= wx0) & (pts[:, 0] <= wx1) & (pts[:, 1] >= wy0) & (pts[:, 1] <= wy1)
    heads = np.flatnonzero(inside)
    window = (wy1 - wy0, wx1 - wx0)
    cells = embedding[:, wy0 // stride : -(-wy1 // stride), wx0 // stride : -(-wx1 // stride)]
    local = pts[heads] - np.array([wx0, wy0], dtype=np.float32)
    circles = circles_of(local, radii[heads], window)
    view = buffer.view((*window, int(cells.shape[0])), cells.dtype)
    needed = read_pixels(circles, window)
    smoothed = smoothed_for_segmentation(cells, window, cfg, view, needed, stride)
    energy = head_energy(smoothed, circles, cfg)
    result = resolve_labels(circles, (energy < cfg.tau_g).numpy(), cost=energy)
    part = result.labels[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    labels[y0:y1, x0:x1] = np.concatenate([[0], heads + 1]).astype(np.int32)[part]
    forced[reaching] |= result.forced[np.searchsorted(heads, reaching)]


class TableBuffer:
    """One flat array that windows' ``Ẽ`` tables are views of, kept from call to call and
    grown by a quarter when too small (a fresh table of a 1024×768 image costs milliseconds of
    page faults alone)."""

    def __init__(self) -> None:
        self._flat: np.ndarray | None = None

    def view(self, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` over the buffer."""
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        needed = math.prod(shape)
        flat = self._flat
        if flat is None or flat.dtype != np_dtype or flat.size < needed:
            flat = self._flat = np.empty(needed + needed // 4, dtype=np_dtype)
        return flat[:needed].reshape(shape)
