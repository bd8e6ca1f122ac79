"""EDP-SAM (paper Sec. 3.1, Fig. 3, App. B): SAM with a point + superpixel dual prompt per head,
clipped to the head's NNEC circle. Also SAM point-only (the paper's Tab. 1 baseline).

SAM itself, its configuration and its weights: :mod:`xmask.annotate.sam_model`.

Per image and per *view* (the whole image, or a tile, see "Large images"):

1. ``set_image`` once: the image embedding is computed once per view.
2. SLIC superpixels of the view (``n_segments = 1000``, App. B.1; skimage defaults otherwise).
3. Per head a prompt: its point (label 1) plus the superpixel that contains the point, given to
   SAM as set by ``SamConfig.superpixel_prompt`` (below). Prompts go through SAM's prompt
   encoder and mask decoder in batches of ``batch_size`` heads: no Python loop per head.
4. Each head's low-resolution mask logits are sampled *only at the pixels of its NNEC circle*
   (the CSR slice of :func:`xmask.geometry.circles.head_circles`), bilinearly, ``logit > 0``.
   :func:`xmask.geometry.labels.resolve_labels` then clips to the circles, resolves overlaps and
   forces each point pixel.
5. **Fallback**: a head whose SAM mask does not contain its own point pixel (the mask ∩ ``C_i``
   is empty, or SAM segmented something beside the head) gets the disc ``fallback_radius·r_i``
   (:func:`xmask.geometry.circles.disc_keep`), flagged in ``MaskResult.fallback``.

No (heads × H × W) tensor is ever built. ``SamPredictor.predict_torch`` is not used for that
reason: it upsamples every low-res mask of a batch to the full image (B × C × H × W floats,
about 0.6 GB for 64 prompts × 3 masks on a 1024×768 image, plus a B × C × 1024 × 1024
intermediate). We call the same two modules it calls (``model.prompt_encoder`` and
``model.mask_decoder`` on ``predictor.features``) and keep the B × 256 × 256 low-res logits;
prompt coordinates are still transformed with ``predictor.transform.apply_coords_torch`` /
``apply_boxes_torch``.

Coordinates
    Points are ``(x, y)`` in the corner-origin continuous grid of :mod:`xmask.geometry`. SAM
    reads a prompt coordinate ``c`` as the position ``c + 0.5`` in its input frame (its prompt
    encoder adds 0.5, "shift to center of pixel"), so a position ``(x, y)`` of the view is sent
    as ``apply_coords(x, y) − 0.5``. SAM's low-res mask (``L × L``, ``L = 256`` for
    ``img_size = 1024``) covers the padded square input frame, ``f = img_size / L`` input pixels
    per cell; the pixel centre ``(x + 0.5, y + 0.5)`` of the view maps to the low-res position
    ``((x + 0.5)·s_x / f, (y + 0.5)·s_y / f)`` with ``s = input size / view size`` per axis
    (SamPredictor's resize of the longest side to ``img_size``), sampled like
    ``F.interpolate(..., align_corners=False)`` (border clamped). SAM's own ``postprocess_masks``
    does the same in two bilinear steps (to 1024², crop, to the original size); one bilinear
    step differs from it only by the interpolation of an interpolation.

Large images
    Views (the whole image or tiles) follow ``large_image``
    (:func:`xmask.annotate.sam_model.sam_views`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries, slic

from xmask.annotate.sam_model import SamConfig, View, build_sam, sam_views, view_of_points
from xmask.geometry.circles import (
    HeadCircles,
    circle_options,
    disc_keep,
    head_circles,
)
from xmask.geometry.labels import MaskResult, resolve_labels
from xmask.geometry.points import pixel_of

if TYPE_CHECKING:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)


@dataclass
class SamStats:
    """Where one image's time went (filled by :func:`annotate_sam` when passed).

    Attributes:
        views: views (whole image or tiles) with at least one head.
        heads: heads prompted.
        fallback: heads given the fallback disc.
        encoder_s: seconds in ``set_image`` (image embeddings).
        superpixel_s: seconds in SLIC and the per-superpixel prompt geometry.
        decoder_s: seconds in the prompt encoder, mask decoder and circle sampling.
    """

    views: int = 0
    heads: int = 0
    fallback: int = 0
    encoder_s: float = 0.0
    superpixel_s: float = 0.0
    decoder_s: float = 0.0


@dataclass
class _Superpixels:
    """SLIC superpixels of one view and their prompt geometry.

    Attributes:
        segments: ``h×w int64`` ids ``0..S−1`` (view pixels).
        boxes: ``S×4 float32`` ``(x0, y0, x1, y1)`` continuous extent of each superpixel.
        interior: ``S×2 float32`` ``(x, y)`` centre of each superpixel's most interior pixel.
    """

    segments: np.ndarray
    boxes: np.ndarray
    interior: np.ndarray


def view_superpixels(image: np.ndarray, cfg: SamConfig) -> _Superpixels:
    """SLIC (``cfg.n_segments``) of a view ``h×w×3 uint8`` and each superpixel's box and most
    interior pixel (largest distance to a superpixel boundary)."""
    segments = slic(
        image, n_segments=cfg.n_segments, compactness=cfg.compactness, start_label=0
    ).astype(np.int64)
    _, segments = np.unique(segments, return_inverse=True)
    segments = segments.reshape(image.shape[:2])
    n = int(segments.max()) + 1
    boxes = np.array(
        [
            [s[1].start, s[0].start, s[1].stop, s[0].stop]
            for s in ndimage.find_objects(segments + 1)
        ],
        dtype=np.float32,
    ).reshape(n, 4)
    depth = ndimage.distance_transform_edt(~find_boundaries(segments, mode="inner"))
    order = np.lexsort((depth.ravel(), segments.ravel()))
    last = np.r_[np.flatnonzero(np.diff(segments.ravel()[order])), order.size - 1]
    rows, cols = np.divmod(order[last], segments.shape[1])
    interior = np.stack([cols, rows], axis=1).astype(np.float32) + 0.5
    return _Superpixels(segments, boxes, interior)


def _lowres_segments(sp: _Superpixels, predictor: SamPredictor) -> torch.Tensor:
    """``L×L int64``: the superpixel under each cell centre of SAM's mask-input grid (−1 in the
    padding), on the predictor's device."""
    lh, lw = predictor.model.prompt_encoder.mask_input_size
    img = predictor.model.image_encoder.img_size
    h, w = sp.segments.shape
    in_h, in_w = predictor.input_size
    cy = (np.arange(lh) + 0.5) * (img / lh)
    cx = (np.arange(lw) + 0.5) * (img / lw)
    row = np.floor(cy * h / in_h).astype(np.int64)
    col = np.floor(cx * w / in_w).astype(np.int64)
    inside = (row[:, None] < h) & (col[None, :] < w)
    seg = sp.segments[np.minimum(row, h - 1)[:, None], np.minimum(col, w - 1)[None, :]]
    return torch.from_numpy(np.where(inside, seg, -1)).to(predictor.device)


def _to_input_frame(xy: torch.Tensor, predictor: SamPredictor) -> torch.Tensor:
    """``…×2`` continuous ``(x, y)`` of the view → SAM prompt coordinates (module docstring)."""
    return predictor.transform.apply_coords_torch(xy, predictor.original_size) - 0.5


@dataclass
class _Prompts:
    """One batch of prompts in SAM's input frame (``B`` heads)."""

    coords: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None


def make_prompts(
    points: np.ndarray,
    predictor: SamPredictor,
    cfg: SamConfig,
    sp: _Superpixels | None,
    lowres: torch.Tensor | None,
) -> _Prompts:
    """Prompts of ``B`` heads of one view.

    Args:
        points: ``B×2 float32`` ``(x, y)`` in the view.
        predictor: with the view's image set.
        cfg: configuration (``superpixel_prompt``, ``mask_logit``).
        sp: the view's superpixels (None for ``"none"``).
        lowres: the view's :func:`_lowres_segments` (``"mask"`` only; None: computed here).
    """
    device = predictor.device
    xy = torch.from_numpy(points).to(device)[:, None, :]
    labels = torch.ones(len(points), 1, dtype=torch.int64, device=device)
    if cfg.superpixel_prompt == "none" or sp is None:
        return _Prompts(_to_input_frame(xy, predictor), labels)
    seg = sp.segments[tuple(pixel_of(points, sp.segments.shape)[:, ::-1].T)]
    if cfg.superpixel_prompt == "points":
        extra = torch.from_numpy(sp.interior[seg]).to(device)[:, None, :]
        both = torch.cat([xy, extra], dim=1)
        return _Prompts(_to_input_frame(both, predictor), labels.expand(-1, 2).contiguous())
    if cfg.superpixel_prompt == "box":
        box = torch.from_numpy(sp.boxes[seg]).to(device)
        boxes = predictor.transform.apply_boxes_torch(box, predictor.original_size) - 0.5
        return _Prompts(_to_input_frame(xy, predictor), labels, boxes=boxes)
    if lowres is None:
        lowres = _lowres_segments(sp, predictor)
    ids = torch.from_numpy(seg).to(device)
    inside = lowres[None] == ids[:, None, None]
    lh, lw = lowres.shape
    img = predictor.model.image_encoder.img_size
    cell = (_to_input_frame(xy[:, 0], predictor) + 0.5) / torch.tensor(
        [img / lw, img / lh], device=device
    )
    cx = cell[:, 0].long().clamp(0, lw - 1)
    cy = cell[:, 1].long().clamp(0, lh - 1)
    inside[torch.arange(len(points), device=device), cy, cx] = True
    logit = torch.where(inside, cfg.mask_logit, -cfg.mask_logit).float()
    return _Prompts(_to_input_frame(xy, predictor), labels, masks=logit[:, None])


@torch.inference_mode()
def decode(predictor: SamPredictor, prompts: _Prompts, multimask: bool) -> torch.Tensor:
    """SAM's prompt encoder + mask decoder on the set image, without upsampling.

    Returns:
        ``B×L×L float32`` low-res mask logits (``L = 256`` for SAM), one mask per prompt (of
        three, the highest predicted IoU when ``multimask``).
    """
    model = predictor.model
    sparse, dense = model.prompt_encoder(
        points=(prompts.coords, prompts.labels), boxes=prompts.boxes, masks=prompts.masks
    )
    low, iou = model.mask_decoder(
        image_embeddings=predictor.features,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    best = iou.argmax(dim=1) if multimask else torch.zeros_like(iou[:, 0], dtype=torch.long)
    return low[torch.arange(low.shape[0], device=low.device), best]


def sample_lowres(
    logits: torch.Tensor, which: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Bilinear samples of ``B×L×L`` logits, ``F.interpolate(align_corners=False)`` semantics.

    Args:
        logits: ``B×Lh×Lw``.
        which: ``Q int64`` mask of each query.
        u: ``Q`` continuous x in low-res cells (cell ``k`` covers ``[k, k+1)``).
        v: ``Q`` continuous y in low-res cells.

    Returns:
        ``Q`` sampled logits.
    """
    _, lh, lw = logits.shape
    flat = logits.reshape(-1)
    a = (u - 0.5).clamp(min=0)
    b = (v - 0.5).clamp(min=0)
    ax, by = a.floor(), b.floor()
    wx, wy = a - ax, b - by
    x0 = ax.long().clamp(max=lw - 1)
    y0 = by.long().clamp(max=lh - 1)
    x1 = (x0 + 1).clamp(max=lw - 1)
    y1 = (y0 + 1).clamp(max=lh - 1)
    base = which * (lh * lw)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat[base + y * lw + x]

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _entries(offsets: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat circle-pixel entries of ``heads`` (their CSR slices, concatenated) and the position
    of the owning head in ``heads`` for each entry."""
    starts = offsets[heads]
    counts = offsets[heads + 1] - starts
    which = np.repeat(np.arange(len(heads)), counts)
    first = np.cumsum(counts) - counts
    entries = np.arange(int(counts.sum())) - first[which] + starts[which]
    return entries, which


def _view_keep(
    image: np.ndarray,
    circles: HeadCircles,
    heads: np.ndarray,
    view: View,
    predictor: SamPredictor,
    cfg: SamConfig,
    keep: np.ndarray,
    stats: SamStats,
) -> None:
    """Fill ``keep`` (``P bool``) at the circle pixels of ``heads``, prompted in ``view``."""
    crop = np.ascontiguousarray(image[view.y0 : view.y1, view.x0 : view.x1])
    start = time.perf_counter()
    predictor.set_image(crop)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)  # charge the embedding to the encoder
    stats.encoder_s += time.perf_counter() - start
    start = time.perf_counter()
    sp = lowres = None
    if cfg.superpixel_prompt != "none":
        sp = view_superpixels(crop, cfg)
        if cfg.superpixel_prompt == "mask":
            lowres = _lowres_segments(sp, predictor)
    stats.superpixel_s += time.perf_counter() - start
    start = time.perf_counter()
    device = predictor.device
    img = predictor.model.image_encoder.img_size
    (in_h, in_w), (h, w) = predictor.input_size, predictor.original_size
    offsets = circles.pixels.offsets.numpy()
    px, py = circles.pixels.x.numpy(), circles.pixels.y.numpy()
    local = circles.points[heads] - np.array([view.x0, view.y0], dtype=np.float32)
    for lo in range(0, len(heads), cfg.batch_size):
        batch = heads[lo : lo + cfg.batch_size]
        prompts = make_prompts(local[lo : lo + len(batch)], predictor, cfg, sp, lowres)
        logits = decode(predictor, prompts, cfg.multimask)
        lh, lw = logits.shape[1:]
        entries, which = _entries(offsets, batch)
        x = px[entries] - view.x0
        y = py[entries] - view.y0
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        entries, which, x, y = entries[inside], which[inside], x[inside], y[inside]
        u = torch.from_numpy((x + 0.5) * (in_w / w) * (lw / img)).float().to(device)
        v = torch.from_numpy((y + 0.5) * (in_h / h) * (lh / img)).float().to(device)
        value = sample_lowres(logits, torch.from_numpy(which).to(device), u, v)
        keep[entries] = (value > predictor.model.mask_threshold).cpu().numpy()
    stats.decoder_s += time.perf_counter() - start


def annotate_sam(
    image: np.ndarray,
    points: np.ndarray,
    predictor: SamPredictor,
    cfg: SamConfig | None = None,
    stats: SamStats | None = None,
) -> MaskResult:
    """EDP-SAM (or SAM point-only, ``superpixel_prompt="none"``) masks of one image.

    Args:
        image: ``H×W×3 uint8`` RGB.
        points: ``N×2 float32`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
        predictor: from :func:`build_sam`.
        cfg: configuration; None for the defaults.
        stats: filled with the image's counts and timings when given.

    Returns:
        :class:`~xmask.geometry.labels.MaskResult`: ``H×W int32`` labels (0 background,
        ``k`` = ``points[k − 1]``); ``fallback`` marks heads whose SAM mask missed their point
        pixel and got the disc.

    Raises:
        ValueError: a bad image, or points not finite or outside the image.
    """
    cfg = cfg or SamConfig()
    stats = stats if stats is not None else SamStats()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    circles = head_circles(points, image.shape[:2], **circle_options(cfg))
    n = len(circles)
    keep = np.zeros(len(circles.pixels), dtype=bool)
    if n == 0:
        return resolve_labels(circles, keep)
    views = sam_views(image.shape[:2], cfg)
    owner = view_of_points(circles.points, views)
    for index, view in enumerate(views):
        heads = np.flatnonzero(owner == index)
        if len(heads):
            _view_keep(image, circles, heads, view, predictor, cfg, keep, stats)
            stats.views += 1
    predictor.reset_image()
    point = circles.pixels.point.numpy()
    fallback = np.ones(n, dtype=bool)
    fallback[point[circles.own]] = ~keep[circles.own]
    keep = np.where(fallback[point], disc_keep(circles, cfg.fallback_radius), keep)
    stats.heads += n
    stats.fallback += int(fallback.sum())
    log.debug(
        "SAM %s: %d heads, %d views, %d fallback; encoder %.2fs, superpixels %.2fs, decoder %.2fs",
        cfg.superpixel_prompt,
        n,
        stats.views,
        int(fallback.sum()),
        stats.encoder_s,
        stats.superpixel_s,
        stats.decoder_s,
    )
    return resolve_labels(circles, keep, fallback=fallback)


def sam_backend(
    cfg: SamConfig | None = None, builder: Callable[[], Sam] | None = None
) -> Callable[[np.ndarray, np.ndarray], MaskResult]:
    """An annotation backend ``(image H×W×3 uint8, points N×2 (x, y)) → MaskResult`` that builds
    the predictor once (:func:`build_sam`)."""
    cfg = cfg or SamConfig()
    predictor = build_sam(cfg, builder)

    def run(image: np.ndarray, points: np.ndarray) -> MaskResult:
        return annotate_sam(image, points, predictor, cfg)

    return run
