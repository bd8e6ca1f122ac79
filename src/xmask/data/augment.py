"""Joint augmentation of image, head points, instance label map and validity mask.

Mean Teacher training (``docs/equations.md``) feeds the teacher a *weak* view and
the student a *strong* view of the same image. Both views share one random geometry:

1. resize by ``s ~ U(scale_range)`` to ``(round(H·s), round(W·s))``: the image bilinearly with
   antialiasing, the label map and validity mask by ``NEAREST_EXACT`` (torch's ``"nearest"``
   mode is shifted by half a pixel; ``"nearest-exact"`` samples the source pixel under each
   output pixel centre, the grid of :mod:`xmask.geometry`);
2. crop ``crop_size`` at ``(left, top)``; where the resized image is smaller than the crop the
   offset is negative and the crop is zero-padded (image 0, label 0, invalid);
3. horizontal flip with probability ``flip_p``.

Points follow with :func:`~xmask.geometry.points.scale_points` (by the exact per-axis factors
``new/old``), :func:`~xmask.geometry.points.translate_points` and
:func:`~xmask.geometry.points.flip_points_horizontal`, never with torchvision's ``KeyPoints``.

Points that leave the crop are dropped and the label map is renumbered so that label ``k`` is
the ``k``-th kept point (1-based, original order kept). **Dropped-instance rule:** pixels of an
instance whose point fell outside the crop become background (label 0) *and* invalid in the
validity mask. Such a head is still partly visible but has no point, so no loss may treat it
as background (a false "no head here") or as an instance without a centre; excluding it is
the only reading that is right for every loss. (A kept head whose mask is so small that
downscaling removes all its pixels keeps its point; its id is then absent from the map.)

The strong view adds, on the same crop: colour jitter (brightness, contrast, saturation, hue in
random order) with probability ``jitter_p``, greyscale with ``grayscale_p``, Gaussian blur with
``σ ~ U(blur_sigma)`` with ``blur_p``, JPEG re-encoding at a quality ``~ U(jpeg_quality)`` with
``jpeg_p``, and always one cutout rectangle whose sides are a
``U(cutout_frac)`` fraction of the crop's sides; the cutout is filled with ``cutout_fill`` and is
invalid in the strong view's validity mask only. The strong view's points and labels equal the
weak view's.

Labeled crops (:meth:`Augmenter.labeled`) are the weak view, and with probability
``labeled_photometric_p`` get the same photometric changes (never a cutout), so that the
supervised loss also sees greyscale, blurred and compressed heads.

Label maps are optional: a sample without one (``labels=None``) gives views with
``labels=None`` (never an all-zero map, which would claim "no head anywhere"); their validity
mask then marks only padding (and, in the strong view, the cutout) invalid.

All randomness comes from the ``torch.Generator`` passed in, so a seeded generator reproduces
the views exactly; nothing touches the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from xmask.data.augment_config import AugmentConfig
from xmask.data.photometric import coin, photometric, randint, uniform
from xmask.geometry.points import (
    flip_points_horizontal,
    inside_image,
    scale_points,
    translate_points,
)
from xmask.types import Sample


@dataclass
class View:
    """One (augmented or plain) view of a sample, as tensors on one device.

    Attributes:
        image: ``3×h×w float32`` RGB in ``[0, 1]``.
        points: ``N×2 float32`` ``(x, y)`` pixels of this view (geometry convention).
        labels: ``h×w int32`` instance label map (0 background, ``k`` = ``points[k − 1]``), or
            None when the sample has no label map.
        valid: ``h×w bool``, False where no loss may look (padding, cutout, dropped instances).
        name: the sample's name.
    """

    image: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor | None
    valid: torch.Tensor
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the view."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])


@dataclass
class ViewBatch:
    """A batch of same-size views.

    Attributes:
        images: ``B×3×h×w float32``.
        points: ``B`` tensors of ``N_b×2 float32`` ``(x, y)``.
        labels: ``B×h×w int32``, or None when no view in the batch has a label map.
        valid: ``B×h×w bool``.
        names: ``B`` names.
    """

    images: torch.Tensor
    points: list[torch.Tensor]
    labels: torch.Tensor | None
    valid: torch.Tensor
    names: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewBatch:
        """The batch on ``device``."""
        return ViewBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            points=[p.to(device, non_blocking=non_blocking) for p in self.points],
            labels=None
            if self.labels is None
            else self.labels.to(device, non_blocking=non_blocking),
            valid=self.valid.to(device, non_blocking=non_blocking),
            names=list(self.names),
        )


@dataclass(frozen=True)
class GeometryParams:
    """One draw of the shared geometry, applied as resize → crop (with padding) → flip.

    Attributes:
        resize: ``(height, width)`` the image is resized to.
        top: crop row offset in the resized image (negative: padding above).
        left: crop column offset in the resized image (negative: padding on the left).
        height: crop height.
        width: crop width.
        flip: mirror the crop left-right.
    """

    resize: tuple[int, int]
    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclass(frozen=True)
class CutoutParams:
    """The cutout rectangle: rows ``[top, top + height)``, columns ``[left, left + width)``."""

    top: int
    left: int
    height: int
    width: int


def _tensor(array: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    """CPU tensor sharing ``array`` when it is already writable, C-ordered and of ``dtype``."""
    return torch.from_numpy(np.require(array, dtype=dtype, requirements=["C", "W"]))


def to_view(sample: Sample) -> View:
    """The sample as a :class:`View` with no augmentation (evaluation): everything valid.

    ``points`` and ``labels`` share memory with the sample's arrays when their dtype already
    matches (xmask never modifies them in place).
    """
    h, w = sample.size
    image = _tensor(sample.image, np.uint8).permute(2, 0, 1)
    return View(
        image=tvf.to_dtype(image, torch.float32, scale=True),
        points=_tensor(sample.points, np.float32).reshape(-1, 2),
        labels=None if sample.labels is None else _tensor(sample.labels, np.int32),
        valid=torch.ones((h, w), dtype=torch.bool),
        name=sample.name,
    )


def sample_geometry(
    size: tuple[int, int], cfg: AugmentConfig, generator: torch.Generator
) -> GeometryParams:
    """Draw the shared geometry for an image of ``size = (H, W)``.

    The resize factor is uniform in ``scale_range`` (or in its logarithm with
    ``scale_log_uniform``), the same for both axes.

    The crop offset is uniform over all placements: inside the resized image when it is larger
    than the crop, and over all paddings that contain it when it is smaller (per axis).
    """
    h, w = size
    lo, hi = cfg.scale_range
    if cfg.scale_log_uniform:
        scale = math.exp(uniform(generator, math.log(lo), math.log(hi)))
    else:
        scale = uniform(generator, lo, hi)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    ch, cw = cfg.crop_hw
    top = randint(generator, min(0, rh - ch), max(0, rh - ch))
    left = randint(generator, min(0, rw - cw), max(0, rw - cw))
    return GeometryParams((rh, rw), top, left, ch, cw, coin(generator, cfg.flip_p))


def nearest_resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize by pixel centres ("nearest-exact"), any dtype.

    Output pixel ``(i, j)`` takes input pixel ``(⌊(i + ½)·H/h⌋, ⌊(j + ½)·W/w⌋)``, computed in
    integers (no rounding at exact halves; the same on every torchvision version).

    Args:
        mask: ``…×H×W``.
        size: ``(h, w)`` output rows and columns.
    """
    height, width = mask.shape[-2:]
    h, w = size
    rows = (torch.arange(h, device=mask.device) * 2 + 1) * height // (2 * h)
    cols = (torch.arange(w, device=mask.device) * 2 + 1) * width // (2 * w)
    return mask.index_select(-2, rows).index_select(-1, cols)


def _resize(view: View, size: tuple[int, int]) -> View:
    h, w = view.size
    rh, rw = size
    labels = None if view.labels is None else nearest_resize(view.labels, size)
    valid = nearest_resize(view.valid, size)
    return View(
        image=tvf.resize(view.image, [rh, rw], InterpolationMode.BILINEAR, antialias=True),
        points=scale_points(view.points, rw / w, rh / h),
        labels=labels,
        valid=valid,
        name=view.name,
    )


def _crop(view: View, top: int, left: int, height: int, width: int) -> View:
    """Crop (zero-padded outside the image) and drop the points that leave it."""
    points = translate_points(view.points, -left, -top)
    keep = torch.as_tensor(inside_image(points, (height, width)), device=points.device)
    valid = tvf.crop_mask(view.valid, top, left, height, width)
    labels = view.labels
    if labels is not None:
        labels, dropped = _renumber(tvf.crop_mask(labels, top, left, height, width), keep)
        valid = valid & ~dropped
    return View(
        image=tvf.crop(view.image, top, left, height, width),
        points=points[keep],
        labels=labels,
        valid=valid,
        name=view.name,
    )


def _renumber(labels: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relabel to the kept points (``k`` = ``k``-th kept) and find pixels of dropped points.

    Args:
        labels: ``h×w int32``, ids in ``[0, N]``.
        keep: ``N bool``, the points that stay.

    Returns:
        ``(h×w int32`` renumbered labels with dropped instances set to 0, ``h×w bool`` pixels
        that belonged to a dropped instance``)``.
    """
    n = int(keep.numel())
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > n):
        raise ValueError(
            f"label map ids must lie in [0, {n}] (one per point), "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    lut = torch.zeros(n + 1, dtype=torch.int32, device=labels.device)
    lut[1:][keep] = torch.arange(1, int(keep.sum()) + 1, dtype=torch.int32, device=labels.device)
    dropped_ids = torch.zeros(n + 1, dtype=torch.bool, device=labels.device)
    dropped_ids[1:] = ~keep
    index = labels.long()
    return lut[index], dropped_ids[index]


def _flip(view: View) -> View:
    return View(
        image=tvf.horizontal_flip(view.image),
        points=flip_points_horizontal(view.points, view.size[1]),
        labels=None if view.labels is None else tvf.horizontal_flip_mask(view.labels),
        valid=tvf.horizontal_flip_mask(view.valid),
        name=view.name,
    )


def apply_geometry(view: View, params: GeometryParams) -> View:
    """Resize, crop (zero-padded) and optionally flip a view, deterministically.

    Points leaving the crop are dropped; the label map is renumbered and the pixels of
    dropped instances become label 0 and invalid (module docstring).

    Args:
        view: e.g. from :func:`to_view`; ``image`` ``3×H×W``, ``points`` ``N×2`` ``(x, y)``.
        params: from :func:`sample_geometry` or built by hand.

    Returns:
        A view of size ``(params.height, params.width)``.
    """
    out = _resize(view, params.resize)
    out = _crop(out, params.top, params.left, params.height, params.width)
    return _flip(out) if params.flip else out


def sample_cutout(
    size: tuple[int, int], cfg: AugmentConfig, generator: torch.Generator
) -> CutoutParams:
    """Draw the cutout rectangle for a view of ``size = (h, w)`` (fully inside it)."""
    h, w = size
    ch = max(1, round(h * uniform(generator, *cfg.cutout_frac)))
    cw = max(1, round(w * uniform(generator, *cfg.cutout_frac)))
    return CutoutParams(randint(generator, 0, h - ch), randint(generator, 0, w - cw), ch, cw)


def strong_view(weak: View, cfg: AugmentConfig, generator: torch.Generator) -> View:
    """The strong view of an already geometry-augmented weak view.

    Same geometry, points and labels; photometric changes and one cutout, which is invalid in
    the returned view's validity mask only.
    """
    image = photometric(weak.image, cfg, generator)
    box = sample_cutout(weak.size, cfg, generator)
    fill = torch.tensor(cfg.cutout_fill, dtype=image.dtype, device=image.device)
    image = tvf.erase(image, box.top, box.left, box.height, box.width, fill)
    valid = weak.valid.clone()
    valid[box.top : box.top + box.height, box.left : box.left + box.width] = False
    return View(
        image=image,
        points=weak.points.clone(),
        labels=None if weak.labels is None else weak.labels.clone(),
        valid=valid,
        name=weak.name,
    )


class Augmenter:
    """Makes the (weak, strong) pair of views of a sample for Mean Teacher training.

    Example::

        augment = Augmenter(AugmentConfig())
        weak, strong = augment(sample, torch.Generator().manual_seed(0))
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()

    def weak(self, sample: Sample | View, generator: torch.Generator) -> View:
        """Geometry only (random scale, crop, flip)."""
        view = to_view(sample) if isinstance(sample, Sample) else sample
        return apply_geometry(view, sample_geometry(view.size, self.cfg, generator))

    def labeled(self, sample: Sample | View, generator: torch.Generator) -> View:
        """A labeled crop: the weak geometry, then with probability ``labeled_photometric_p``
        the photometric changes (:func:`photometric`); points and labels as in the weak view.
        With ``labeled_photometric_p = 0`` it draws exactly what :meth:`weak` draws."""
        view = self.weak(sample, generator)
        if self.cfg.labeled_photometric_p > 0 and coin(generator, self.cfg.labeled_photometric_p):
            view = replace(view, image=photometric(view.image, self.cfg, generator))
        return view

    def __call__(self, sample: Sample | View, generator: torch.Generator) -> tuple[View, View]:
        """``(weak, strong)`` views sharing one geometry; both ``crop_hw`` in size."""
        weak = self.weak(sample, generator)
        return weak, strong_view(weak, self.cfg, generator)


def collate_views(views: Sequence[View]) -> ViewBatch:
    """Stack same-size views into a :class:`ViewBatch` (points stay a list).

    Raises:
        ValueError: empty input, or some views have a label map and others do not.
    """
    if not views:
        raise ValueError("cannot collate an empty list of views")
    with_labels = [v.labels is not None for v in views]
    if any(with_labels) and not all(with_labels):
        missing = [v.name for v, has in zip(views, with_labels, strict=True) if not has]
        raise ValueError(f"views without label maps in a batch with label maps: {missing[:5]}")
    maps = [v.labels for v in views if v.labels is not None]
    labels = torch.stack(maps) if maps else None
    return ViewBatch(
        images=torch.stack([v.image for v in views]),
        points=[v.points for v in views],
        labels=labels,
        valid=torch.stack([v.valid for v in views]),
        names=[v.name for v in views],
    )


def collate_pairs(pairs: Sequence[tuple[View, View]]) -> tuple[ViewBatch, ViewBatch]:
    """DataLoader ``collate_fn`` for :class:`Augmenter` outputs: ``(weak batch, strong batch)``."""
    return collate_views([p[0] for p in pairs]), collate_views([p[1] for p in pairs])
