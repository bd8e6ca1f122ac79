"""Scale-adaptive inference: the network sees every scene with heads of the sizes it was trained
on, whatever the resolution of the photo.

A counter trained on ShanghaiTech sees heads of roughly 5–60 px in images of about 1024 px. The
same scene photographed at 4000 px shows heads four times larger (it fires several times on one
head, and on leaves and pavement), and a far, dense crowd shows heads of a few pixels (it fires
in cell after cell, a regular lattice, or misses them). :func:`adaptive_outputs` runs the
network in up to two passes:

1. **Canonical pass**: the image resized so that its longer side is at most ``canonical_side``
   (never enlarged), so that a photo of a scene gives the same count at any resolution.
2. **Enlarged pass**, only where the first pass finds heads closer together than
   ``target_spacing``: the spacing of a crowd is the distance from each predicted head to its
   nearest neighbour, and a low quantile of it (``quantile``) speaks for the densest part of
   the image (in a perspective view, the far crowd). The canonical image is then enlarged by
   ``target_spacing / spacing``, at most ``max_enlarge`` times the original resolution, and the
   network runs again on it; the counts and points of that pass are the image's.

Images with fewer than ``min_heads`` heads in the first pass keep it (their spacing says little).

3. **Locating pass** (opt-in, ``locate_enlarge``): the count stays that of the pass kept, but
   the points come from one more pass at ``locate_enlarge`` times its scale, where a head spans
   more cells: its ``N`` highest cells, ``N`` the count (:func:`top_cells_rule`). Enlarging
   alone would place heads better but count more (it fires twice on near heads).
Points come back in pixels of the original image (``(x, y) / scale``). Every constant is chosen
on held-out training images (``docs/accuracy.md``), never on test images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.nn import functional as nnf

from xmask.geometry.points import distinct_pixels, pixel_of
from xmask.inference.count_rule import CountRule
from xmask.inference.decode import Heads, decode_heads
from xmask.inference.tiling import (
    MAX_PIXELS,
    OVERLAP,
    TILE,
    Network,
    image_tensor,
    predict_outputs,
)
from xmask.types import ModelOutput


@dataclass(frozen=True)
class ScaleRule:
    """How the network input is sized from the image (module docstring).

    Attributes:
        canonical_side: the first pass shrinks images whose longer side is longer to this many
            pixels (None: no shrinking, the image as it is).
        target_spacing: heads closer than this (pixels of the first pass, at ``quantile``)
            trigger the enlarged pass (None: one pass only).
        quantile: which quantile of the nearest-neighbour distances is the spacing.
        min_heads: images with fewer heads in the first pass keep it.
        max_enlarge: the enlarged pass is at most this many times the original resolution.
        locate_enlarge: points from a locating pass this many times larger than the pass kept
            (None: from the pass kept).
    """

    canonical_side: int | None = 1024
    target_spacing: float | None = 12.0
    quantile: float = 0.25
    min_heads: int = 20
    max_enlarge: float = 2.0
    locate_enlarge: float | None = None

    def __post_init__(self) -> None:
        bad = []
        if self.canonical_side is not None and self.canonical_side < 64:
            bad.append("canonical_side")
        if self.target_spacing is not None and not self.target_spacing > 0:
            bad.append("target_spacing")
        if not 0.0 <= self.quantile <= 1.0:
            bad.append("quantile")
        if self.min_heads < 2:
            bad.append("min_heads")
        if not self.max_enlarge >= 1.0:
            bad.append("max_enlarge")
        if self.locate_enlarge is not None and not self.locate_enlarge > 1.0:
            bad.append("locate_enlarge")
        if bad:
            raise ValueError(f"invalid ScaleRule field(s): {', '.join(bad)}")

    def first_scale(self, size: tuple[int, int]) -> float:
        """Scale of the canonical pass for an image of ``size = (H, W)`` (at most 1)."""
        if self.canonical_side is None:
            return 1.0
        return min(1.0, self.canonical_side / max(size))

    def enlarged_scale(self, points: np.ndarray, first: float) -> float | None:
        """Scale of the enlarged pass, or None to keep the first pass.

        Args:
            points: ``N×2`` ``(x, y)`` heads of the first pass, in its pixels.
            first: the scale of the first pass (relative to the original image).
        """
        if self.target_spacing is None or len(points) < self.min_heads:
            return None
        spacing = float(np.quantile(nearest_distances(points), self.quantile))
        if spacing >= self.target_spacing:
            return None
        wanted = first * self.target_spacing / max(spacing, 1e-6)
        scale = min(wanted, self.max_enlarge)
        return scale if scale > first * 1.05 else None


ONE_PASS = ScaleRule(canonical_side=None, target_spacing=None)
"""The image as it is, one pass (what xmask did before scale adaptation)."""

SHRINK = ScaleRule(target_spacing=None)
"""The canonical pass alone: images longer than 1024 px shrunk to it, never enlarged."""

SCALE_OPTIONS = ("auto", "off", "shrink", "adaptive")
"""What ``--scale`` accepts: the model's own rule, one pass at the image's size, the canonical
pass alone (:data:`SHRINK`), or :class:`ScaleRule` ``()``."""


def resolve_scale(option: str, own: ScaleRule, locate: float | None = None) -> ScaleRule:
    """The rule a ``--scale`` option names (:data:`SCALE_OPTIONS`), ``own`` for ``"auto"``;
    ``locate`` (``--locate``), where given, replaces its ``locate_enlarge`` (0: none).

    Raises:
        ValueError: another option.
    """
    rules = {"auto": own, "off": ONE_PASS, "shrink": SHRINK, "adaptive": ScaleRule()}
    if option not in rules:
        raise ValueError(f"scale must be one of {', '.join(SCALE_OPTIONS)}, got {option!r}")
    if locate is None:
        return rules[option]
    return replace(rules[option], locate_enlarge=locate or None)


def nearest_distances(points: np.ndarray) -> np.ndarray:
    """Distance from each of ``N >= 2`` points (``N×2``) to its nearest other point."""
    dist, _ = cKDTree(np.asarray(points, dtype=np.float64)).query(points, k=2)
    return dist[:, 1]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` of an image of ``size`` resized by ``scale`` (at least 1 pixel)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_tensor(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``1×3×H×W`` float image resized to ``size`` (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    resized = nnf.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized.clamp_(0.0, 1.0)


@dataclass
class ScaledOutputs:
    """The network's outputs for one image at the scale it chose.

    Attributes:
        outputs: stride-4 logits (and embedding) of the input at ``size``.
        scale: ``size / original size`` (per axis it may differ by rounding: ``axis_scale``).
        size: ``(h, w)`` of the network input.
        original: ``(H, W)`` of the image.
        tiles: network tiles run in the final pass.
        passes: 1, 2 or 3 (with a locating pass).
        rule: the count rule these outputs are decoded with, where the scale rule sets one (a
            locating pass: :func:`top_cells_rule`); None: the model's.
    """

    outputs: ModelOutput
    scale: float
    size: tuple[int, int]
    original: tuple[int, int]
    tiles: int
    passes: int
    rule: CountRule | None = None

    def heads(self, count_rule: CountRule) -> Heads:
        """The heads of these outputs, in pixels of the network input: decoded with
        :attr:`rule` where set, else with ``count_rule`` (the model's)."""
        return decode_heads(self.outputs, self.size, self.rule or count_rule)

    @property
    def axis_scale(self) -> tuple[float, float]:
        """``(sx, sy)``: network-input pixels per original pixel along x and y."""
        return self.size[1] / self.original[1], self.size[0] / self.original[0]

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """``N×2`` ``(x, y)`` points of the network input in pixels of the original image."""
        sx, sy = self.axis_scale
        return (np.asarray(points, dtype=np.float32) / np.array([sx, sy], np.float32)).astype(
            np.float32
        )

    def head_points(self, points: np.ndarray) -> np.ndarray:
        """``N×2`` ``(x, y)`` head points of the network input in pixels of the original image,
        no two in one pixel (:func:`~xmask.geometry.points.distinct_pixels`: where two round
        into one, the later moves to the nearest free pixel, so each head can own its point)."""
        return distinct_pixels(self.to_original(points), self.original)

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """``N×2`` ``(x, y)`` original pixels in pixels of the network input."""
        sx, sy = self.axis_scale
        return (np.asarray(points, dtype=np.float32) * np.array([sx, sy], np.float32)).astype(
            np.float32
        )


def adaptive_outputs(
    model: Network,
    image: np.ndarray,
    device: torch.device | str,
    rule: ScaleRule,
    count_rule: CountRule,
    *,
    max_pixels: int | None = MAX_PIXELS,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> ScaledOutputs:
    """The network's outputs for one ``H×W×3 uint8`` image at the scale ``rule`` chooses
    (module docstring). Call under ``torch.inference_mode()`` with the model in eval mode.

    Args:
        count_rule: decides which cells of the first pass are heads (their spacing).
        max_pixels: network inputs with more pixels run in tiles (:mod:`xmask.inference.tiling`).
    """
    original = (int(image.shape[0]), int(image.shape[1]))
    full = image_tensor(image, device)
    tiling = {"max_pixels": max_pixels, "tile": tile, "overlap": overlap}
    first = rule.first_scale(original)
    size = scaled_size(original, first)
    out, tiles = predict_outputs(model, resize_tensor(full, size), **tiling)
    kept = ScaledOutputs(out, first, size, original, tiles, 1)
    if rule.target_spacing is not None:  # the first pass's heads decide on an enlarged one
        enlarged = rule.enlarged_scale(kept.heads(count_rule).points, first)
        if enlarged is not None:
            size = scaled_size(original, enlarged)
            out, tiles = predict_outputs(model, resize_tensor(full, size), **tiling)
            kept = ScaledOutputs(out, enlarged, size, original, tiles, 2)
    if rule.locate_enlarge is None:
        return kept
    count = len(kept.heads(count_rule))
    scale = kept.scale * rule.locate_enlarge
    size = scaled_size(original, scale)
    out, tiles = predict_outputs(model, resize_tensor(full, size), **tiling)
    located = top_cells_rule(out.logits, count)
    return ScaledOutputs(out, scale, size, original, tiles, kept.passes + 1, located)


def top_cells_rule(logits: torch.Tensor, count: int) -> CountRule:
    """A one-threshold rule under which exactly the ``count`` highest cells of one image's
    ``1×1×h×w`` logits count (fewer only where logits tie at the cut)."""
    flat = logits.detach().reshape(-1).float()
    if count >= flat.numel():
        return CountRule(float(flat.min()) - 1.0)
    if count <= 0:
        return CountRule(float(flat.max()) + 1.0)
    return CountRule(float(torch.topk(flat, count + 1).values[-1]))


def labels_to_size(
    labels: np.ndarray, size: tuple[int, int], points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A label map of the network input brought to the image's ``size = (H, W)``: each image
    pixel takes the label under its centre (nearest, the grid of :mod:`xmask.geometry.points`),
    then every head's point pixel is given back to it (lowest index first where two share one).

    Args:
        labels: ``h×w int32`` label map of the network input.
        points: ``N×2`` ``(x, y)`` heads in image pixels (label ``k`` is ``points[k − 1]``).

    Returns:
        ``(H×W int32 labels, N int64 areas)``.
    """
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    out = labels[rows[:, None], cols[None, :]]
    if len(points):
        cell = pixel_of(points, size)
        order = np.arange(len(points))[::-1]
        out[cell[order, 1], cell[order, 0]] = (order + 1).astype(out.dtype)
    areas = np.bincount(out.ravel(), minlength=len(points) + 1)[1:].astype(np.int64)
    return out, areas
