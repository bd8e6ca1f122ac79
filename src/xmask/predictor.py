"""Inference on one image: count, head points and one instance mask per head.

:class:`Predictor` wraps a trained :class:`~xmask.models.XMaskModel` (eval mode, on its device)
and turns an image (``H×W×3 uint8`` RGB array, PIL image or file path) into a
:class:`Prediction`:

1. **Network** (``network_s``): the image as a ``1×3×H×W`` float tensor in ``[0, 1]`` →
   stride-4 logits (and, with a mask head, the stride-4 embedding), under
   ``torch.inference_mode``.
2. **Post-network** (``post_s``): the heads are the cells whose logit is above the count
   threshold (:func:`xmask.models.count_head.decode_points`; 0 is the paper's rule, a
   calibrated value comes from :mod:`xmask.calibration`), each at its cell centre (a cell cut
   by the right or bottom image border puts its point at the centre of its part inside the
   image, so every point lies in the image); then the embedding is upsampled and smoothed
   (Eq. 2–5) and every head is segmented (Eq. 11–12, :data:`xmask.segment.instances.INFERENCE`:
   λ = 0.8, τ_g = 1.1, σ = 3). Every head gets a non-empty mask; overlaps go to the lowest
   energy. The label map is ``H×W int32``, 0 background, ``k`` = ``points[k − 1]``.

A model without a mask head (Stage 1) still gives the count and the points; ``labels`` is then
None. :meth:`Predictor.segment_points` segments heads given by the caller (ground-truth points,
for instance) instead of the predicted ones; the network's own count is still reported.

Large images
    An image with more than ``max_pixels`` pixels (default
    :data:`xmask.evaluation.MAX_PIXELS`, about 4.2 MP) runs the network in the overlapping
    tiles of :mod:`xmask.evaluation` (its tiling rule): logits *and* embedding are assembled
    from the same tiles, each cell decided by exactly one tile, so network memory is bounded by
    the tile size. (The mask head's CoordConv channels then span each tile rather than the
    whole image, as they spanned each training crop.) Heads are then segmented window by
    window (:mod:`xmask.segment.windows`, cores of ``core`` = 2048 px): the smoothed embedding
    ``Ẽ`` (``4·D`` = 64 bytes per pixel) exists for one window at a time, in a buffer the
    predictor reuses, and each pixel is labelled from exactly one window, with the same result
    as the whole image at once. What grows with the image is its ``H×W int32`` label map, the
    stride-4 outputs (``4·(D + 1)/16`` bytes per pixel) and the ``1×3×H×W`` input.

Timing
    ``network_s`` and ``post_s`` are wall-clock seconds of the two phases of each call (the
    device is synchronised at the phase boundary on CUDA); reading and decoding an image file
    is in neither.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from xmask.annotate.coco import ImageRecord, label_maps_to_coco
from xmask.annotate.masks import check_points
from xmask.count_rule import CountRule, as_count_rule
from xmask.data.image_io import load_image, to_rgb_array
from xmask.device import resolve_device
from xmask.errors import UsageError
from xmask.evaluation import (
    MAX_PIXELS,
    OVERLAP,
    TILE,
    check_tiling,
    image_tensor,
    predict_outputs,
)
from xmask.models.count_head import COUNT_STRIDE, decode_points
from xmask.models.fusion import inference_copy
from xmask.segment.instances import INFERENCE, SegmentConfig
from xmask.segment.windows import CORE, TableBuffer, segment_in_windows

log = logging.getLogger(__name__)

ImageInput = np.ndarray | PIL.Image.Image | str | Path
"""What :class:`Predictor` accepts: ``H×W×3 uint8`` RGB, a PIL image, or an image file."""

"""Image rows of the smoothed embedding built at once for large images."""

DOT_COLOUR = (255, 32, 32)
"""Colour of the head-point dots of :meth:`Prediction.overlay`."""

ROI_COLOUR = (255, 220, 0)
"""Colour of the region outline of :meth:`Prediction.overlay`."""


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        count: heads the network counts (cells with logit above the count threshold); equal
            to ``len(points)`` except after :meth:`Predictor.segment_points`, whose points are
            the caller's.
        points: ``N×2 float32`` ``(x, y)`` pixels of the segmented heads.
        scores: ``N float32`` head probabilities (sigmoid of the logit; 1 for given points).
        labels: ``H×W int32`` instance label map (0 background, ``k`` = ``points[k − 1]``), or
            None for a model without a mask head.
        size: ``(H, W)`` of the image.
        network_s: seconds in the network (module docstring, Timing).
        post_s: seconds after it: point decoding, smoothing, Eq. 11–12.
        tiles: network tiles run (1: the whole image at once).
        areas: ``N int64`` pixels of each head's mask, or None without labels.
        image: the ``H×W×3 uint8`` RGB input (for :meth:`overlay`).
        roi: ``K×2`` ``(x, y)`` vertices of the region the heads were restricted to
            (:func:`xmask.roi.restrict`), or None.
    """

    count: int
    points: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    size: tuple[int, int]
    network_s: float
    post_s: float
    tiles: int = 1
    areas: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    roi: np.ndarray | None = None

    def to_coco(self, image_id: int = 1, file_name: str = "image.png") -> dict[str, Any]:
        """COCO instances of this image (:func:`xmask.annotate.coco.label_maps_to_coco`: RLE
        masks, one annotation per head with its point as keypoint, ids from 1).

        Raises:
            UsageError: no label map (a model without a mask head).
        """
        if self.labels is None:
            raise UsageError(f"{file_name}: no instance masks (the model has no mask head)")
        coco = label_maps_to_coco([ImageRecord(file_name, self.points, self.labels)])
        coco["images"][0]["id"] = image_id
        for annotation in coco["annotations"]:
            annotation["image_id"] = image_id
        return coco

    def overlay(self, alpha: float = 0.5, dot_radius: int = 2, caption: bool = True) -> np.ndarray:
        """The image with a translucent colour per instance, a dot on every head point, the
        region's outline (if any) and the count written in the top-left corner.

        Args:
            alpha: opacity of the instance colours.
            dot_radius: radius of the point dots in pixels (0: no dots).
            caption: write ``"N heads"`` (``"N heads in region"``) on the image.

        Returns:
            ``H×W×3 uint8`` RGB.

        Raises:
            UsageError: the prediction holds no image.
        """
        if self.image is None:
            raise UsageError("this prediction holds no image to draw on")
        out = self.image.copy()
        if self.labels is not None:
            colours = instance_colours(len(self.points))
            inside = self.labels > 0
            tint = colours[self.labels[inside] - 1]
            mixed = (1.0 - alpha) * out[inside] + alpha * tint
            out[inside] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        draw_dots(out, self.points, dot_radius, DOT_COLOUR)
        if self.roi is None and not caption:
            return out
        text = f"{self.count:,} heads" + (" in region" if self.roi is not None else "")
        return draw_annotations(out, self.roi, text if caption else None)


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


def draw_annotations(image: np.ndarray, roi: np.ndarray | None, text: str | None) -> np.ndarray:
    """``image`` with the region's outline and a caption box in the top-left corner, sized
    to the image (a copy, ``H×W×3 uint8``)."""
    from PIL import ImageDraw, ImageFont

    canvas = PIL.Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    scale = max(1, round(min(image.shape[:2]) / 400))
    if roi is not None:
        draw.polygon([tuple(v) for v in roi.tolist()], outline=ROI_COLOUR, width=2 * scale)
    if text is not None:
        font = ImageFont.load_default(size=14 * scale)
        *_, right, bottom = draw.textbbox((6 * scale, 4 * scale), text, font=font)
        draw.rectangle((0, 0, right + 6 * scale, bottom + 4 * scale), fill=(0, 0, 0))
        draw.text((6 * scale, 4 * scale), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """``H×W×3 uint8`` RGB of an array, a PIL image or an image file.

    A file is decoded by :func:`xmask.data.image_io.load_image` with its EXIF orientation
    applied (the image as a viewer shows it); a PIL image is converted as that function
    converts files (greyscale, 16-bit, palette, alpha).

    Raises:
        DataError: an unreadable file.
        UsageError: an array that is not ``H×W×3 uint8``, or another type.
    """
    if isinstance(image, (str, Path)):
        return load_image(image, apply_exif=True).array
    if isinstance(image, PIL.Image.Image):
        return to_rgb_array(image, Path(f"<PIL image {image.mode}>"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UsageError(f"image array must be H×W×3 uint8, got {image.shape} {image.dtype}")
        return image
    raise UsageError(f"expected an image array, PIL image or path, got {type(image).__name__}")


def inside_points(centres: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cell centres → head points inside the image: a cell cut by the right or bottom border
    gets the centre of its part inside the image (``N×2 float32`` ``(x, y)``)."""
    half = COUNT_STRIDE / 2.0
    limit = np.array([size[1], size[0]], dtype=np.float32)
    return ((centres - half + np.minimum(centres + half, limit)) / 2.0).astype(np.float32)


class Predictor:
    """Count, head points and one instance mask per head for single images (module docstring).

    Args:
        model: a trained network (an :class:`~xmask.models.XMaskModel`). The predictor runs an
            :func:`~xmask.models.fusion.inference_copy` of it on ``device`` (BatchNorm folded,
            channels-last, eval mode); ``model`` itself is untouched.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, or a device.
        count_threshold: logit above which a cell counts as a head (0: the paper's rule), or a
            two-regime :class:`~xmask.count_rule.CountRule`.
        segment: constants of Eq. 11–12 and of the smoothing (default: evaluation's).
        max_pixels: images with more pixels run in tiles (None: never).
        tile: tile side in pixels (a multiple of 16).
        overlap: least overlap of neighbouring tiles (a multiple of 16).
        core: side of the windows heads are segmented in (a multiple of 4;
            :mod:`xmask.segment.windows`).

    Raises:
        ValueError: bad tiling arguments.
        XmaskError: an unavailable device.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        count_threshold: float | CountRule = 0.0,
        segment: SegmentConfig = INFERENCE,
        *,
        max_pixels: int | None = MAX_PIXELS,
        tile: int = TILE,
        overlap: int = OVERLAP,
        core: int = CORE,
    ) -> None:
        check_tiling(tile, overlap)
        if core <= 0 or core % COUNT_STRIDE:
            raise ValueError(f"core must be a positive multiple of {COUNT_STRIDE}, got {core}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = inference_copy(model).to(self.device)
        self.count_rule = as_count_rule(count_threshold)
        self.segment = segment
        self.max_pixels, self.tile, self.overlap = max_pixels, tile, overlap
        self.core = core
        self._buffer = TableBuffer()
        self.source: Path | None = None
        """The model folder or run it was loaded from (:meth:`load`), else None."""

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str | torch.device = "auto",
        which: str = "teacher",
        threshold: str | float = "auto",
        **kwargs: Any,
    ) -> Predictor:
        """A predictor for a model folder, a registered model name or a training run
        (:func:`xmask.model_folder.load_inference_model`).

        Args:
            model: a model folder or name (None: the shipped default model), or a run folder,
                its ``checkpoints/`` or ``best/`` folder, or a ``.safetensors`` file in a run.
            device: where the network runs.
            which: ``"teacher"`` or ``"student"`` (runs only).
            threshold: a logit, or ``"auto"``: the model folder's threshold, or the
                calibration stored for a run's weights, else 0.
            kwargs: the other arguments of :class:`Predictor` (``segment`` defaults to the
                model folder's).

        Raises:
            CheckpointError: missing, corrupt, tampered or foreign files.
            XmaskError: a bad threshold or device.
        """
        from xmask.model_folder import load_inference_model

        resolved = device if isinstance(device, torch.device) else resolve_device(device)
        loaded = load_inference_model(model, resolved, which, threshold)
        kwargs.setdefault("segment", loaded.segment)
        predictor = cls(loaded.model, resolved, loaded.count_rule, **kwargs)
        predictor.source = loaded.source
        return predictor

    @property
    def has_masks(self) -> bool:
        """The model has a mask head (predictions carry label maps)."""
        return getattr(self.model, "mask_head", None) is not None

    def __call__(self, image: ImageInput) -> Prediction:
        """Count, points and (with a mask head) masks of the predicted heads of one image."""
        return self._predict(as_rgb_array(image), [None])[0]

    def segment_points(
        self, image: ImageInput, points: np.ndarray, scores: np.ndarray | None = None
    ) -> Prediction:
        """Masks of the heads the caller gives (e.g. ground-truth points) instead of the
        predicted ones; ``count`` is still the network's own count.

        Args:
            image: ``H×W×3 uint8`` RGB, a PIL image or an image file.
            points: ``N×2`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
            scores: ``N`` head probabilities kept in the result (default 1).

        Raises:
            UsageError: the model has no mask head.
            ValueError: points not ``N×2``, not finite, or outside the image.
        """
        array = as_rgb_array(image)
        return self._predict(array, [self._given_heads(array, points, scores)])[0]

    def predict_and_segment_points(
        self, image: ImageInput, points: np.ndarray
    ) -> tuple[Prediction, Prediction]:
        """``(self(image), self.segment_points(image, points))`` from one network pass.

        Raises:
            UsageError: the model has no mask head.
            ValueError: bad ``points`` (as :meth:`segment_points`).
        """
        array = as_rgb_array(image)
        own, given = self._predict(array, [None, self._given_heads(array, points, None)])
        return own, given

    def _given_heads(
        self, image: np.ndarray, points: np.ndarray, scores: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Checked ``N×2`` points and their ``N`` scores (default 1) for ``image``."""
        if not self.has_masks:
            raise UsageError("segmenting given points needs a model with a mask head")
        if np.ndim(points) != 2 or np.shape(points)[1] != 2:
            raise ValueError(f"points must be N×2 (x, y), got shape {np.shape(points)}")
        pts = check_points(points, image.shape[:2])
        given = np.ones(len(pts), np.float32) if scores is None else np.asarray(scores, np.float32)
        return pts, given.reshape(len(pts))

    def _predict(
        self, image: np.ndarray, head_sets: list[tuple[np.ndarray, np.ndarray] | None]
    ) -> list[Prediction]:
        """One network pass, then one :class:`Prediction` per head set: None for the
        predicted heads, else ``(points N×2 (x, y), scores N)``."""
        size = (int(image.shape[0]), int(image.shape[1]))
        with torch.inference_mode():
            start = time.perf_counter()
            out, tiles = predict_outputs(
                self.model,
                image_tensor(image, self.device),
                max_pixels=self.max_pixels,
                tile=self.tile,
                overlap=self.overlap,
            )
            self._synchronize()
            network_s = time.perf_counter() - start
            threshold = self.count_rule.threshold_for(out.logits, size[0] * size[1])
            decoded = decode_points(out.logits, threshold)[0]
            results = []
            for heads in head_sets:
                middle = time.perf_counter()
                if heads is None:
                    points = inside_points(decoded.points.cpu().numpy(), size)
                    scores = decoded.scores.cpu().numpy().astype(np.float32)
                else:
                    points, scores = heads
                labels = areas = None
                if out.embedding is not None:
                    instances = segment_in_windows(
                        out.embedding[0],
                        size,
                        points,
                        scores,
                        self.segment,
                        self.core,
                        self._buffer,
                    )
                    labels, areas = instances.labels, instances.area
                results.append(
                    Prediction(
                        count=len(decoded),
                        points=points,
                        scores=scores,
                        labels=labels,
                        size=size,
                        network_s=network_s,
                        post_s=time.perf_counter() - middle,
                        tiles=tiles,
                        areas=areas,
                        image=image,
                    )
                )
        return results

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
