"""SAM for EDP-SAM: its configuration, building it from a local checkpoint, and the views
(whole image or tiles) it sees (the annotation
itself: :mod:`xmask.annotate.edp_sam`).

``segment_anything`` (the optional extra ``sam``) is imported only inside the functions that
need it. Weights come from a local checkpoint file (:func:`build_sam`); none can be downloaded
here, so the tests run a randomly initialised SAM (SAM's compute does not depend on its weights).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from xmask.device import resolve_device
from xmask.errors import DataError, MissingDependencyError, UsageError
from xmask.geometry.circles import (
    R_MIN,
    DuplicatePolicy,
)

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
        duplicates: policy for exact duplicate points (:mod:`xmask.geometry.labels`).
        size_prior: no circle wider than this many head sizes
            (:func:`xmask.geometry.circles.head_sizes`), or None: Eq. 1 alone.
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
    size_prior: float | None = None
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
        MissingDependencyError: ``segment_anything`` is not installed (the ``sam`` extra).
        DataError: a bad checkpoint (:func:`load_sam_weights`).
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as err:
        raise MissingDependencyError("the SAM backend needs segment-anything", "sam") from err
    model = builder() if builder is not None else sam_model_registry[cfg.model_type]()
    name = cfg.model_type if builder is None else "(custom builder)"
    if cfg.checkpoint is None:
        log.warning("SAM %s with RANDOM weights (no checkpoint): for speed tests only", name)
    else:
        load_sam_weights(model, cfg.checkpoint, name)
    model.to(resolve_device(cfg.device)).eval()
    return SamPredictor(model)


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
