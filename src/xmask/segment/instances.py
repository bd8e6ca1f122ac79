"""Instance masks from the smoothed embedding (paper Eq. 11–12, Fig. 5).

For each head point ``p_i`` (NNEC radius ``r_i``, circle ``C_i`` from :mod:`xmask.geometry`):

    ``E_i(y, x) = ||Ẽ(y, x) − c_i|| + λ·||(x, y) − p_i||² / (r_i + ε)²``   on ``C_i``  (Eq. 11)

and pixel ``(y, x)`` is a candidate of head ``i`` when ``E_i < τ_g`` (Eq. 12). Where
candidates overlap the pixel goes to the **lowest energy** (the authors' code lets later heads
overwrite earlier ones); every head is segmented, whatever the density (the authors' code
segments every ``N // 50``-th head above 50). Each head's point pixel is forced in as in
:mod:`xmask.geometry.labels` (same co-located rule), so every head gets a non-empty mask; with
``connected`` (inference) each mask is then one region holding its point, holes filled
(:func:`xmask.geometry.labels.connected_masks`), and ``size_prior`` bounds each circle by the
head's size (:func:`xmask.geometry.circles.head_sizes`).

Energies are computed in local windows: time and memory ``O(D·Σ r_i²)``.

The same code makes the inference masks (λ = 0.8, τ_g = 1.1, σ = 3: :data:`INFERENCE`) and
the pseudo-masks (λ = 0.6, τ_g = 0.8, σ = 1.5: :data:`PSEUDO`; the authors' code). A head alone
in the image gets ``r = min(H, W)/4`` (the authors' mask builder). Pseudo-masks (Fig. 5):
every teacher point with ``p >= p_low`` is segmented (so the background is reliable), and
only those with ``p > p_high`` are *valid*; with a ``gate``, points with ``p <= gate`` get
their whole circle instead of the thresholded energy (the authors' Stage-3 "density gate").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xmask.geometry import kernels
from xmask.geometry.circles import HeadCircles, circle_pixels, head_circles
from xmask.geometry.labels import connected_masks, resolve_labels
from xmask.geometry.sampling import sample_table
from xmask.segment.smoothing import smoothed_table


@dataclass
class SegmentConfig:
    """Constants of Eq. 11–12 and of the smoothing that precedes them.

    Attributes:
        lam: ``λ``, weight of the normalised squared distance.
        tau_g: ``τ_g``, the energy threshold.
        kernel: ``k`` of the Gaussian smoothing (Eq. 2).
        sigma: ``σ`` of the Gaussian smoothing.
        eps: ``ε`` of Eq. 11.
        r_min: floor of the NNEC radius in pixels.
        lone: radius of a head alone in the image, as a fraction of ``min(H, W)``.
        size_prior: the head-sized prior: no circle wider than this many head sizes
            (:func:`xmask.geometry.circles.head_sizes`), or None (Eq. 1 alone).
        connected: each mask one 4-connected region holding its point, holes filled
            (:func:`xmask.geometry.labels.connected_masks`).
    """

    lam: float = 0.8
    tau_g: float = 1.1
    kernel: int = 7
    sigma: float = 3.0
    eps: float = 1e-6
    r_min: float = 3.0
    lone: float = 0.25
    size_prior: float | None = None
    connected: bool = True


INFERENCE = SegmentConfig()
"""Evaluation and prediction: λ = 0.8, τ_g = 1.1, σ = 3."""

PSEUDO = SegmentConfig(lam=0.6, tau_g=0.8, sigma=1.5, connected=False)
"""Pseudo-masks during training: λ = 0.6, τ_g = 0.8, σ = 1.5 (pieces kept as Eq. 12 gives
them)."""


@dataclass
class Instances:
    """One image's instance segmentation.

    Attributes:
        labels: ``H×W int32``, 0 background, ``k`` = ``points[k − 1]``.
        points: ``N×2 float32`` ``(x, y)`` pixels.
        scores: ``N float32`` (the head probabilities given, else 1).
        radii: ``N float32`` NNEC radii.
        area: ``N int64`` pixels of each mask (>= 1 for every head alone in its pixel).
        forced: ``N bool``, the head's own energy failed ``τ_g`` at its point pixel (or seed).
    """

    labels: np.ndarray
    points: np.ndarray
    scores: np.ndarray
    radii: np.ndarray
    area: np.ndarray
    forced: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


def segment_instances(
    table: Tensor,
    points: np.ndarray | Tensor,
    scores: np.ndarray | Tensor | None = None,
    cfg: SegmentConfig = INFERENCE,
    whole_circle: np.ndarray | None = None,
) -> Instances:
    """Eq. 11–12 for every head of one image (module docstring).

    Args:
        table: the smoothed embedding ``Ẽ`` as a pixel-major ``H×W×D`` table
            (:func:`smoothed_for_segmentation`; any device, not differentiated).
        points: ``N×2`` ``(x, y)`` pixels inside the image.
        scores: ``N`` head probabilities (kept in the result), or None.
        cfg: the constants.
        whole_circle: ``N bool``, heads that take their whole circle (the density gate).

    Returns:
        :class:`Instances` (NumPy, CPU).
    """
    size = (int(table.shape[0]), int(table.shape[1]))
    pts = torch.as_tensor(points).detach().cpu().numpy().astype(np.float32).reshape(-1, 2)
    circles = head_circles(
        pts, size, r_min=cfg.r_min, duplicates="distinct", lone=cfg.lone, size_prior=cfg.size_prior
    )
    energy = head_energy(table, circles, cfg)
    keep = (energy < cfg.tau_g).numpy()
    if whole_circle is not None:
        keep |= np.asarray(whole_circle, dtype=bool)[circles.pixels.point.numpy()]
    result = resolve_labels(circles, keep, cost=energy)
    labels, area = result.labels, result.area
    if cfg.connected:
        labels, area = connected_masks(labels, pts)
    n = len(pts)
    given = np.ones(n) if scores is None else torch.as_tensor(scores).detach().cpu().numpy()
    return Instances(
        labels=labels,
        points=pts,
        scores=given.astype(np.float32).reshape(n),
        radii=circles.radii,
        area=area,
        forced=result.forced,
    )


@torch.no_grad()
def head_energy(table: Tensor, circles: HeadCircles, cfg: SegmentConfig) -> Tensor:
    """Eq. 11 at every circle pixel, in the CSR order of ``circles.pixels`` (one compiled
    pass, :func:`xmask.geometry.kernels.circle_energy`; on the CPU).

    Args:
        table: ``H×W×D`` smoothed embedding (any device).
        circles: the heads' NNEC circles (:func:`xmask.geometry.circles.head_circles`).

    Returns:
        ``P float32`` on the CPU.
    """
    pixels = circles.pixels
    table = table.detach().to("cpu", torch.float32)
    centres = sample_table(table, torch.from_numpy(circles.points)).contiguous().numpy()
    spread = circles.radii.astype(np.float32) + np.float32(cfg.eps)
    energy = kernels.circle_energy(
        table.reshape(-1, table.shape[-1]).contiguous().numpy(),
        pixels.flat.numpy(),
        pixels.point.numpy(),
        pixels.dist2.numpy(),
        centres,
        spread * spread,
        cfg.lam,
    )
    return torch.from_numpy(energy)


@dataclass
class PseudoMasks:
    """Pseudo-masks of one unlabeled image (Fig. 5).

    Attributes:
        instances: every point with ``p >= p_low``, segmented.
        valid: ``N bool``, points with ``p > p_high`` (the masks the losses trust).
    """

    instances: Instances
    valid: np.ndarray


def pseudo_masks(
    table: Tensor,
    points: np.ndarray | Tensor,
    scores: np.ndarray | Tensor,
    p_low: float = 0.1,
    p_high: float = 0.95,
    gate: float | None = None,
    cfg: SegmentConfig = PSEUDO,
) -> PseudoMasks:
    """Teacher pseudo-masks (module docstring).

    Args:
        table: the teacher's smoothed embedding, ``H×W×D`` (:func:`smoothed_for_segmentation`).
        points: ``N×2`` teacher points (e.g. every cell with ``p >= p_low``).
        scores: ``N`` probabilities of those points.
        p_low: points below are dropped (paper: 0.1).
        p_high: points above are valid (paper 0.95; the authors' configs 0.9).
        gate: the density gate: points with ``p <= gate`` take their whole circle (authors'
            Stage 3: 0.5), or None.
    """
    prob = torch.as_tensor(scores).detach().cpu().numpy().astype(np.float32).reshape(-1)
    pts = torch.as_tensor(points).detach().cpu().numpy().astype(np.float32).reshape(-1, 2)
    kept = prob >= p_low
    whole = None if gate is None else prob[kept] <= gate
    instances = segment_instances(table, pts[kept], prob[kept], cfg, whole_circle=whole)
    return PseudoMasks(instances, prob[kept] > p_high)


def ignore_disks(points: np.ndarray, size: tuple[int, int], radius: float = 16.0) -> np.ndarray:
    """``H×W bool``: pixels within ``radius`` of any point (the unlabeled-image ignore region
    around mid-confidence teacher points, the authors' code)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    pixels = circle_pixels(pts, np.full(len(pts), radius, dtype=np.float32), size)
    out = np.zeros(size[0] * size[1], dtype=bool)
    out[pixels.flat.numpy()] = True
    return out.reshape(size)


def smoothed_for_segmentation(
    embedding: Tensor,
    size: tuple[int, int],
    cfg: SegmentConfig,
    out: np.ndarray | None = None,
    needed: np.ndarray | None = None,
    stride: int = 4,
) -> Tensor:
    """``Ẽ`` for Eq. 11: one image's stride-``stride`` ``D×h×w`` embedding upsampled to
    ``size`` and smoothed with ``cfg.kernel`` and ``cfg.sigma``, as the pixel-major ``H×W×D``
    table that :func:`segment_instances` takes (written into ``out`` when given, only at the
    ``needed`` pixels when given: :func:`~xmask.segment.smoothing.smoothed_table`)."""
    return smoothed_table(embedding, size, cfg.kernel, cfg.sigma, stride, out, needed)


def read_pixels(circles: HeadCircles, size: tuple[int, int]) -> np.ndarray:
    """``H×W bool``: the pixels Eq. 11 reads of ``Ẽ`` for these circles — every circle pixel,
    and the 3×3 pixels around each point pixel, which hold the four that
    :func:`xmask.geometry.sampling.sample_table` reads for the centre ``c_i`` (Eq. 9; they are
    circle pixels already unless a radius is under √2, below the default ``r_min``)."""
    h, w = size
    needed = np.zeros(h * w, dtype=bool)
    needed[circles.pixels.flat.numpy()] = True
    row, column = np.divmod(circles.point_pixel, w)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            needed[np.clip(row + dy, 0, h - 1) * w + np.clip(column + dx, 0, w - 1)] = True
    return needed.reshape(size)
