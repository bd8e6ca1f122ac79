"""The network on one image, whole or in overlapping tiles: what prediction, calibration and
evaluation all run.

Tiling rule (large images)
    An image with more than ``max_pixels`` pixels runs in overlapping tiles, so memory is
    bounded by the tile size. Along each axis longer than ``tile``, tiles start at
    ``0, tile − overlap, 2·(tile − overlap), …`` while they end before the image does, and
    at the largest multiple of 16 not above ``length − tile`` (unless that is already a
    start); every tile is ``tile`` pixels long except the last, which runs to the image's end
    (at most ``tile + 15`` pixels). An axis no longer than ``tile`` is one span. Neighbouring
    tiles overlap by at least ``overlap`` pixels and split the overlap at its middle (a
    multiple of 4, since all offsets are multiples of 16); each tile keeps only the stride-4
    cells between its two split lines. So every cell of the image is decided by exactly one
    tile, and every kept cell has at least ``overlap / 2`` pixels of real image context
    towards each neighbouring tile. Tile offsets are multiples of 16 (the model's padding
    multiple and coarsest stride, :data:`xmask.models.model.PAD_MULTIPLE`), so each tile's
    cell and feature grids coincide with the full image's. A network whose output at a cell
    depends only on pixels within ``overlap / 2`` of that cell gives exactly the untiled
    logits; a deep network's receptive field is wider, so tiles change its logits slightly,
    mostly near the split lines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xmask.models.count_head import COUNT_STRIDE
from xmask.models.model import PAD_MULTIPLE
from xmask.types import ModelOutput

log = logging.getLogger(__name__)


MAX_PIXELS = 2048 * 2048
"""Images with more pixels than this (about 4.2 MP) are evaluated in tiles."""


TILE = 1024
"""Default tile side in pixels."""


OVERLAP = 128
"""Default overlap of neighbouring tiles in pixels (64 px of context kept on each side)."""


Network = Callable[[torch.Tensor], ModelOutput]
"""What runs on an image: ``1×3×H×W`` float in ``[0, 1]`` → :class:`~xmask.types.ModelOutput`
(a torch :class:`~xmask.models.XMaskModel`, or an
:class:`~xmask.inference.onnx_backend.OnnxNetwork`)."""


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in pixels of the full image.

    Attributes:
        start: first pixel of the tile (a multiple of 16).
        end: one past its last pixel.
        keep_start: first pixel whose cells this tile decides (a multiple of 4).
        keep_end: one past the last such pixel (a multiple of 4, or the image's end).
    """

    start: int
    end: int
    keep_start: int
    keep_end: int


def check_tiling(tile: int, overlap: int, align: int = PAD_MULTIPLE) -> None:
    """Raise ValueError unless ``tile`` and ``overlap`` are multiples of ``align`` (itself a
    multiple of the stride 4) with ``0 <= overlap < tile``."""
    if align % COUNT_STRIDE or tile % align or overlap % align or not 0 <= overlap < tile:
        raise ValueError(
            f"tile ({tile}) and overlap ({overlap}) must be multiples of {align}, "
            f"with 0 <= overlap < tile"
        )


def tile_spans(
    length: int, tile: int = TILE, overlap: int = OVERLAP, align: int = PAD_MULTIPLE
) -> list[Span]:
    """The tiles along one axis of ``length`` pixels (module docstring, tiling rule).

    Args:
        length: image rows or columns.
        tile: tile side; a multiple of ``align``.
        overlap: least overlap of neighbouring tiles; a multiple of ``align``, ``< tile``.
        align: tile offsets are multiples of this (a multiple of the stride 4).

    Returns:
        Spans in order; their ``[keep_start, keep_end)`` ranges partition ``[0, length)``.
    """
    check_tiling(tile, overlap, align)
    if length <= tile:
        return [Span(0, length, 0, length)]
    starts = list(range(0, length - tile, tile - overlap))
    last = (length - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    ends = [s + tile for s in starts[:-1]] + [length]
    cuts = [
        (nxt + end) // (2 * COUNT_STRIDE) * COUNT_STRIDE
        for nxt, end in zip(starts[1:], ends[:-1], strict=True)
    ]
    bounds = [0, *cuts, length]
    return [
        Span(s, e, k0, k1)
        for s, e, k0, k1 in zip(starts, ends, bounds[:-1], bounds[1:], strict=True)
    ]


def image_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """``H×W×3 uint8`` RGB → ``1×3×H×W float32`` in ``[0, 1]`` on ``device``."""
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
    return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def forward_checked(model: Network, images: torch.Tensor) -> ModelOutput:
    """One network call, with the logit (embedding, offset) grids checked against the input."""
    out = model(images)
    grid = tuple(math.ceil(s / COUNT_STRIDE) for s in images.shape[-2:])
    maps = (("logit", out.logits), ("embedding", out.embedding), ("offset", out.offsets))
    for name, tensor in maps:
        if tensor is not None and tuple(tensor.shape[-2:]) != grid:
            raise ValueError(
                f"model returned a {tuple(tensor.shape[-2:])} {name} grid for a "
                f"{tuple(images.shape[-2:])} input, expected {grid}"
            )
    return out


def tiled_outputs(
    model: Network, image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP
) -> tuple[ModelOutput, int]:
    """Logits (and embedding and offsets, for a model with those heads) of a large image
    assembled from overlapping tiles (module docstring: every stride-4 cell comes from exactly
    one tile).

    Args:
        model: maps ``1×3×h×w`` to :class:`~xmask.types.ModelOutput` on the stride-4 grid.
        image: ``1×3×H×W`` float in ``[0, 1]``.
        tile: tile side in pixels.
        overlap: least overlap of neighbouring tiles in pixels.

    Returns:
        (``ModelOutput`` with ``1×1×ceil(H/4)×ceil(W/4)`` logits and, if the model has them,
        the ``1×D×…`` embedding and ``1×2×…`` offsets; number of tiles run).
    """
    height, width = image.shape[-2:]
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    grid = (math.ceil(height / COUNT_STRIDE), math.ceil(width / COUNT_STRIDE))
    names = ("logits", "embedding", "offsets")
    whole: dict[str, torch.Tensor | None] = {}
    for r in rows:
        image_rows, tile_rows = cell_slices(r)
        for c in cols:
            image_cols, tile_cols = cell_slices(c)
            part = forward_checked(model, image[..., r.start : r.end, c.start : c.end])
            for name in names:
                piece = getattr(part, name)
                if piece is None:
                    whole[name] = None
                    continue
                if name not in whole:
                    whole[name] = piece.new_empty((1, piece.shape[1], *grid))
                target = whole[name]
                assert target is not None
                target[..., image_rows, image_cols] = piece[..., tile_rows, tile_cols]
    logits = whole["logits"]
    assert logits is not None
    out = ModelOutput(logits=logits, embedding=whole["embedding"], offsets=whole["offsets"])
    return out, len(rows) * len(cols)


def cell_slices(span: Span) -> tuple[slice, slice]:
    """The stride-4 cells a span keeps: (in the image's grid, in the tile's grid)."""
    first = span.keep_start // COUNT_STRIDE
    stop = -(-span.keep_end // COUNT_STRIDE)
    offset = span.start // COUNT_STRIDE
    return slice(first, stop), slice(first - offset, stop - offset)


def predict_outputs(
    model: Network,
    image: torch.Tensor,
    *,
    max_pixels: int | None = MAX_PIXELS,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> tuple[ModelOutput, int]:
    """Logits (and embedding) of one image, whole or in tiles.

    Call under ``torch.inference_mode()`` with the model in eval mode.

    Args:
        model: maps ``1×3×H×W`` to :class:`~xmask.types.ModelOutput`.
        image: ``1×3×H×W`` float in ``[0, 1]``, on the model's device.
        max_pixels: images with more pixels run in tiles (None: never). A whole image that
            runs out of GPU memory is retried in tiles.
        tile: tile side in pixels.
        overlap: least overlap of neighbouring tiles in pixels.

    Returns:
        (:class:`~xmask.types.ModelOutput` on the stride-4 grid of the image, number of tiles
        run (1: whole image)).
    """
    height, width = image.shape[-2:]
    if max_pixels is None or height * width <= max_pixels:
        try:
            return forward_checked(model, image), 1
        except torch.cuda.OutOfMemoryError:
            log.warning("%d×%d image: out of GPU memory, retrying in tiles", width, height)
        torch.cuda.empty_cache()
    return tiled_outputs(model, image, tile, overlap)
