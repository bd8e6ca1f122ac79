"""EDP-SAM (paper Sec. 3.1, Fig. 3, App. B): SAM with a point + superpixel dual prompt per head,
clipped to the head's NNEC circle. Also SAM point-only (the paper's Tab. 1 baseline).

``segment_anything`` (the optional extra ``sam``) is imported only inside the functions that
need it. Weights come from a local checkpoint file (:func:`build_sam`); none can be downloaded
here, so the tests run a randomly initialised SAM (SAM's compute does not depend on its weights).

Per image and per *view* (the whole image, or a tile, see "Large images"):

1. ``set_image`` once: the image embedding is computed once per view.
2. SLIC superpixels of the view (``n_segments = 1000``, App. B.1; skimage defaults otherwise).
3. Per head a prompt: its point (label 1) plus the superpixel that contains the point, given to
   SAM as set by ``SamConfig.superpixel_prompt`` (below). Prompts go through SAM's prompt
   encoder and mask decoder in batches of ``batch_size`` heads: no Python loop per head.
4. Each head's low-resolution mask logits are sampled *only at the pixels of its NNEC circle*
   (the CSR slice of :func:`xmask.annotate.masks.head_circles`), bilinearly, ``logit > 0``.
   :func:`xmask.annotate.masks.resolve_labels` then clips to the circles, resolves overlaps and
   forces each point pixel.
5. **Fallback**: a head whose SAM mask does not contain its own point pixel (the mask ∩ ``C_i``
   is empty, or SAM segmented something beside the head) gets the disc ``fallback_radius·r_i``
   (:func:`xmask.annotate.masks.disc_keep`), flagged in ``MaskResult.fallback``.

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

Superpixel prompt (``superpixel_prompt``), the paper leaves the encoding open
    ``"box"`` (default): the bounding box of the superpixel, with the point. ``"mask"``: the
    superpixel as SAM's dense ``mask_input`` (``±mask_logit`` logits on SAM's low-res grid),
    with the point. ``"points"``: a second positive point at the superpixel's most interior
    pixel (farthest from a superpixel boundary), with the head point. ``"none"``: the point
    alone, the SAM point-only baseline of Tab. 1 (+ NNEC clip).

    Why the box: (1) it is in SAM's training distribution *together with points*: SAM's
    interactive training starts from a box or a point and adds points to the same prompt set
    (SAM paper, Sec. 3 and App. A), whereas ``mask_input`` was only ever SAM's *own* previous
    low-res logits (the predictor's docstring: "typically coming from a previous prediction
    iteration"); binary masks given there are widely reported to give empty or poor masks
    (facebookresearch/segment-anything issues #169, #471, #694). (2) What the superpixel must
    add to the point is the object's *extent*: App. B.2 / Fig. S4 say that a point alone gives
    "broken masks", i.e. SAM's part/whole ambiguity of a single click; a box is SAM's strongest
    disambiguation of extent (with a box prompt SAM returns one mask, ``multimask_output=False``
    as its documentation advises for non-ambiguous prompts). Fig. S3 fits this reading: bigger
    superpixels (smaller ``n``) give "inaccurate masks", smaller ones "broken masks", i.e. the
    extent follows the superpixel. (3) Extra positive points only say "these pixels are in"
    and bound nothing; at 1000 segments a superpixel (about 28 px on a 1024×768 image) often
    straddles a head and its background or neighbour, and a positive point placed there pulls
    that region into the mask. The NNEC clip then removes what a too-large box adds in dense
    regions (the paper's motivation for NNEC). (4) Cost: a box adds two sparse tokens; the mask
    prompt adds SAM's mask-downscaling convolutions per prompt and a B × L × L input.
    Random weights cannot show quality differences; the tests check that every mode runs.
    Cost (segment-anything's ``vit_b``, random weights, 1024×704, batches of 64, CPU with two
    busy cores): mask decoder 187 ms/head for ``"none"`` and ``"points"``, 219 ms for
    ``"box"``, 222 ms for ``"mask"``; the decoder repeats the 64×64×256 image embedding per
    prompt, so the prompt adds little. Image encoder about 21-27 s per view, SLIC 1.2 s.

``multimask_output``
    None (default): SAM's advice, one mask for the dual prompts, three for a lone point
    (``"none"``), of which the one with the highest predicted IoU is kept.

Large images (``large_image``, default ``"tile"``)
    SamPredictor resizes the longest side to ``img_size`` (1024), and its mask is an
    ``L = 256`` grid: one low-res cell is 4 input pixels. ShanghaiTech A (longest side at most
    1024) is seen at scale >= 1. A UCF-QNRF or JHU++ image (shorter side up to 1536 / 2048,
    thousands of 5-15 px heads) rescaled to 1024 would put a head in one or two low-res cells
    and several heads in one 16-px ViT patch. Rule ``"tile"``: an image whose longest side is
    at most ``max_side`` (1280, i.e. a rescale by >= 0.8) is one view; a larger one is cut into
    a grid of tiles of at most ``tile_size`` (1024) px per side, evenly spaced with at least
    ``tile_overlap`` (256) px of overlap. Each head is prompted in exactly one tile: the one
    whose *core* holds its point (cores split the overlaps at their middle, so a head is at
    least ``tile_overlap / 2`` px from the edge of its tile, except at the image border), and
    superpixels are computed per tile (the paper's 1000 segments per SAM input). Circle pixels
    outside the head's tile are not in its SAM mask. Rule ``"resize"``: always one view (plain
    SamPredictor rescaling).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries, slic

from xmask.annotate.masks import (
    R_MIN,
    HeadCircles,
    MaskResult,
    disc_keep,
    head_circles,
    resolve_labels,
)
from xmask.device import resolve_device
from xmask.errors import DataError, UsageError
from xmask.geometry import DuplicatePolicy, pixel_of

if TYPE_CHECKING:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)

PromptMode = Literal["box", "mask", "points", "none"]
LargeImageRule = Literal["tile", "resize"]
MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


@dataclass(frozen=True)
class SamConfig:
    """Every setting of the EDP-SAM backend (rules in the module docstring).

    Attributes:
        checkpoint: local SAM state-dict file (``sam_vit_b_01ec64.pth`` etc.); None: random
            weights (speed tests only; a warning is logged).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        batch_size: heads (prompts) per mask-decoder call.
        superpixel_prompt: ``"box"``, ``"mask"``, ``"points"``, or ``"none"`` (point only).
        n_segments: SLIC segments per view (App. B.1: 1000).
        compactness: SLIC compactness (skimage's default).
        mask_logit: magnitude of the logits of a ``"mask"`` prompt (inside +, outside −).
        multimask_output: None: False with a superpixel prompt, True for a lone point (then the
            mask of highest predicted IoU is kept).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        large_image: ``"tile"`` or ``"resize"``.
        max_side: longest side (px) up to which an image is one view under ``"tile"``.
        tile_size: largest tile side (px).
        tile_overlap: smallest overlap of neighbouring tiles (px).
        r_min: smallest NNEC radius in px (paper: 3).
        duplicates: policy for exact duplicate points (:mod:`xmask.annotate.masks`).
        fallback_radius: radius of the fallback disc as a fraction of ``r_i``.
    """

    checkpoint: str | Path | None = None
    model_type: str = "vit_b"
    batch_size: int = 64
    superpixel_prompt: PromptMode = "box"
    n_segments: int = 1000
    compactness: float = 10.0
    mask_logit: float = 10.0
    multimask_output: bool | None = None
    device: str = "auto"
    large_image: LargeImageRule = "tile"
    max_side: int = 1280
    tile_size: int = 1024
    tile_overlap: int = 256
    r_min: float = R_MIN
    duplicates: DuplicatePolicy = "distinct"
    fallback_radius: float = 0.5

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise UsageError(f"SAM model type {self.model_type!r}; available: {MODEL_TYPES}")
        if self.superpixel_prompt not in ("box", "mask", "points", "none"):
            raise UsageError(f"superpixel_prompt {self.superpixel_prompt!r} unknown")
        if self.large_image not in ("tile", "resize"):
            raise UsageError(f"large_image {self.large_image!r} unknown; 'tile' or 'resize'")
        if self.batch_size < 1 or self.n_segments < 1:
            raise UsageError("batch_size and n_segments must be >= 1")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise UsageError("tile_overlap must be in [0, tile_size)")

    @property
    def multimask(self) -> bool:
        """Whether SAM returns three masks per prompt (resolved ``multimask_output``)."""
        if self.multimask_output is None:
            return self.superpixel_prompt == "none"
        return self.multimask_output


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


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def load_sam_weights(model: torch.nn.Module, path: str | Path, model_type: str = "") -> None:
    """Load a SAM state dict from ``path`` into ``model``, never unpickling arbitrary objects.

    Args:
        model: a SAM model of the architecture the file was saved from.
        path: local file written by ``torch.save(model.state_dict())`` (Meta's checkpoints are).
        model_type: named in error messages only.

    Raises:
        DataError: the file is missing, not a plain tensor state dict (``weights_only``), or
            its keys or shapes do not match ``model`` (e.g. the wrong ``model_type``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "SAM checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refusals raise UnpicklingError; bad zips others
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(path, f"refused: not a plain tensor state dict ({first})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "not a SAM state dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        what = f"SAM {model_type}" if model_type else "this SAM model"
        parts = [
            f"{len(keys)} {name} key(s), e.g. {keys[0]}"
            for name, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape-mismatched", shapes),
            )
            if keys
        ]
        raise DataError(path, f"does not match {what} (wrong model type?): " + "; ".join(parts))
    model.load_state_dict(state)


def build_sam(cfg: SamConfig, builder: Callable[[], Sam] | None = None) -> SamPredictor:
    """A ``SamPredictor`` on ``cfg.device`` with the weights of ``cfg.checkpoint``.

    Args:
        cfg: configuration (``checkpoint``, ``model_type``, ``device``).
        builder: makes the randomly initialised model; default
            ``segment_anything.sam_model_registry[cfg.model_type]``.

    Raises:
        ImportError: ``segment_anything`` is not installed (``pip install xmask[sam]``).
        DataError: a bad checkpoint (:func:`load_sam_weights`).
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as err:
        raise ImportError(
            "the SAM backend needs segment-anything: pip install 'xmask[sam]'"
        ) from err
    model = builder() if builder is not None else sam_model_registry[cfg.model_type]()
    name = cfg.model_type if builder is None else "(custom builder)"
    if cfg.checkpoint is None:
        log.warning("SAM %s with RANDOM weights (no checkpoint): for speed tests only", name)
    else:
        load_sam_weights(model, cfg.checkpoint, name)
    model.to(resolve_device(cfg.device)).eval()
    return SamPredictor(model)


# --------------------------------------------------------------------------------------------
# Views (large-image rule)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """A window of the image given to SAM, and the core whose heads it prompts.

    Pixel ranges are half-open, ``[x0, x1) × [y0, y1)``; the core is
    ``[core_x0, core_x1) × [core_y0, core_y1)`` in continuous ``(x, y)`` (the last core of a row
    or column also holds points on the image border).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    core_x0: float
    core_y0: float
    core_x1: float
    core_y1: float


def _axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, float, float]]:
    """``(start, end, core_start, core_end)`` of evenly spaced tiles covering ``[0, length)``."""
    if length <= tile:
        return [(0, length, 0.0, float(length))]
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(k * (length - tile) / (n - 1)) for k in range(n)]
    ends = [s + tile for s in starts]
    cuts = [0.0] + [(ends[k] + starts[k + 1]) / 2 for k in range(n - 1)] + [float(length)]
    return [(starts[k], ends[k], cuts[k], cuts[k + 1]) for k in range(n)]


def sam_views(size: tuple[int, int], cfg: SamConfig) -> list[View]:
    """The views of an ``(H, W)`` image under ``cfg.large_image`` (module docstring)."""
    h, w = size
    if cfg.large_image == "resize" or max(h, w) <= cfg.max_side:
        return [View(0, 0, w, h, 0.0, 0.0, float(w), float(h))]
    xs = _axis_tiles(w, cfg.tile_size, cfg.tile_overlap)
    ys = _axis_tiles(h, cfg.tile_size, cfg.tile_overlap)
    return [View(x[0], y[0], x[1], y[1], x[2], y[2], x[3], y[3]) for y in ys for x in xs]


def view_of_points(points: np.ndarray, views: list[View]) -> np.ndarray:
    """``N int64``: the view whose core holds each ``(x, y)`` point (views from :func:`sam_views`,
    row-major over a grid)."""
    x_cuts = sorted({v.core_x0 for v in views})
    y_cuts = sorted({v.core_y0 for v in views})
    col = np.searchsorted(x_cuts, points[:, 0], side="right") - 1
    row = np.searchsorted(y_cuts, points[:, 1], side="right") - 1
    return np.clip(row, 0, None) * len(x_cuts) + np.clip(col, 0, None)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Per image
# --------------------------------------------------------------------------------------------


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
        :class:`~xmask.annotate.masks.MaskResult`: ``H×W int32`` labels (0 background,
        ``k`` = ``points[k − 1]``); ``fallback`` marks heads whose SAM mask missed their point
        pixel and got the disc.

    Raises:
        ValueError: a bad image, or points not finite or outside the image.
    """
    cfg = cfg or SamConfig()
    stats = stats if stats is not None else SamStats()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    circles = head_circles(points, image.shape[:2], cfg.r_min, cfg.duplicates)
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
