"""XMask discriminative loss (paper Eq. 6–10), computed in local windows.

For each centre ``p_i`` (a head point lying on instance ``ℓ_i`` of the label map ``M``):

- ``r_i``: NNEC radius among the image's centres (Eq. 6, :func:`xmask.geometry.circles.nnec_radii`,
  ``r_min`` floor, one centre alone: ``0.5·min(H, W)``; exact duplicates measured to the
  nearest *different* position);
- ``C_i``: pixels whose centre lies within ``r_i`` (Eq. 7), minus ignored pixels;
- ``R_i⁺ = C_i ∩ {M = ℓ_i}``, ``R_i⁻ = C_i ∩ {M ≠ ℓ_i}`` (Eq. 8);
- ``c_i``: ``Ẽ`` sampled at ``p_i`` (Eq. 9, :func:`xmask.geometry.sampling.sample_centres`);
- ``d = ||Ẽ(y, x) − c_i||``; pull ``[d − (τ − δ)]₊`` on ``R_i⁺``, push ``[m − d]₊`` on
  ``R_i⁻`` with ``m = τ + δ`` (Eq. 10; ``push_margin`` overrides ``m``: the authors' code uses
  ``τ + 4δ``).

Normalisation ``"paper"`` (default): ``L_i`` is the mean over ``R_i = R_i⁺ ∪ R_i⁻`` (Eq. 10),
then the loss is the mean of ``L_i`` over every centre of the batch with ``R_i ≠ ∅``.
``"code"`` (the authors'): per centre, the pull mean over ``R_i⁺`` plus the push mean over
``R_i⁻`` (0 when empty); centres with ``R_i⁺ = ∅`` are skipped; the sum over centres is
divided by the batch size.

Only the circle pixels are ever gathered (:class:`xmask.geometry.circles.CirclePixels`): memory and
time are ``O(D·Σ r_i²)``, never centres × H × W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from xmask.geometry.circles import circle_pixels, nnec_radii
from xmask.geometry.points import pixel_of
from xmask.geometry.sampling import sample_centres

Normalisation = Literal["paper", "code"]


@dataclass
class DiscriminativeConfig:
    """Constants of Eq. 10 (the authors' defaults, ``docs/equations.md``).

    Attributes:
        tau: ``τ``, the distance that separates pull from push.
        delta: ``δ``, the half margin.
        push_margin: ``m`` of the push hinge; None means ``τ + δ`` (the paper).
        normalisation: ``"paper"`` or ``"code"`` (module docstring).
        r_min: floor of the NNEC radius in pixels.
    """

    tau: float = 0.6
    delta: float = 0.1
    push_margin: float | None = None
    normalisation: Normalisation = "paper"
    r_min: float = 3.0

    @property
    def margin(self) -> float:
        """The push margin ``m`` in use."""
        return self.tau + self.delta if self.push_margin is None else self.push_margin


@dataclass
class MaskTarget:
    """One image's supervision for the discriminative loss.

    Attributes:
        points: ``N×2 float`` ``(x, y)`` pixels, the centres ``p_i``.
        instance: ``N int64``, ``ℓ_i >= 1``: the label of ``p_i``'s instance in ``labels``.
        labels: ``H×W`` integer label map ``M`` (0 background).
        ignore: ``H×W bool``, pixels left out of every ``R_i``, or None.
    """

    points: Tensor
    instance: Tensor
    labels: Tensor
    ignore: Tensor | None = None


@dataclass
class DiscriminativeResult:
    """The loss and what to log.

    Attributes:
        loss: scalar, differentiable.
        pull: scalar, mean pull hinge over all ``R⁺`` pixels (detached, for logging).
        push: scalar, mean push hinge over all ``R⁻`` pixels (detached).
        centres: centres that contributed.
        pixels: ``Σ |R_i|`` over those centres.
    """

    loss: Tensor
    pull: Tensor
    push: Tensor
    centres: int
    pixels: int


def centres_on_instances(points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the points that fall on an instance of ``labels`` (the authors' centres: the
    student's predicted points on a GT or pseudo instance).

    Args:
        points: ``N×2`` ``(x, y)`` pixels inside the image.
        labels: ``H×W`` label map.

    Returns:
        ``(points, instance)``: the kept points and the label under each.
    """
    h, w = labels.shape
    cell = torch.from_numpy(pixel_of(points.detach().cpu().numpy(), (h, w))).to(labels.device)
    instance = labels[cell[:, 1], cell[:, 0]].long()
    keep = instance > 0
    return points[keep.to(points.device)], instance[keep]


def discriminative_loss(
    smoothed: Tensor, targets: list[MaskTarget], cfg: DiscriminativeConfig | None = None
) -> DiscriminativeResult:
    """Eq. 10 over a batch (module docstring), in local windows.

    Args:
        smoothed: ``B×D×H×W`` smoothed embedding ``Ẽ`` at image resolution.
        targets: ``B`` :class:`MaskTarget`, same ``H×W``.
        cfg: constants (defaults: :class:`DiscriminativeConfig`).

    Returns:
        :class:`DiscriminativeResult`; the loss is 0 (still attached to ``smoothed``) when no
        centre has a non-empty region.
    """
    cfg = cfg if cfg is not None else DiscriminativeConfig()
    if len(targets) != smoothed.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {smoothed.shape[0]}")
    terms = [_image_terms(smoothed[b], t, cfg) for b, t in enumerate(targets)]
    hinge = torch.cat([t.hinge for t in terms])
    positive = torch.cat([t.positive for t in terms])
    point = torch.cat([t.point + base for t, base in zip(terms, _bases(terms), strict=True)])
    n = sum(t.n for t in terms)
    if cfg.normalisation == "paper":
        per_point, valid = _mean_by(hinge, point, n)
        loss = per_point[valid].sum() / valid.sum().clamp(min=1)
    elif cfg.normalisation == "code":
        pull, has_pull = _mean_by(hinge * positive, point, n, positive)
        push, _ = _mean_by(hinge * ~positive, point, n, ~positive)
        valid = has_pull
        loss = (pull + push)[valid].sum() / len(targets)
    else:
        raise ValueError(f"normalisation must be 'paper' or 'code', got {cfg.normalisation!r}")
    used = valid[point]
    loss = loss + 0.0 * smoothed.sum()  # keep the graph when nothing contributes
    return DiscriminativeResult(
        loss=loss,
        pull=_masked_mean(hinge.detach(), positive & used),
        push=_masked_mean(hinge.detach(), ~positive & used),
        centres=int(valid.sum()),
        pixels=int(used.sum()),
    )


@dataclass
class _Terms:
    """One image's hinge values per region pixel."""

    hinge: Tensor
    positive: Tensor
    point: Tensor
    n: int


def _image_terms(smoothed: Tensor, target: MaskTarget, cfg: DiscriminativeConfig) -> _Terms:
    """Hinge of every pixel of every ``R_i`` of one image (``D×H×W`` embedding)."""
    size = (int(smoothed.shape[1]), int(smoothed.shape[2]))
    if tuple(target.labels.shape) != size:
        raise ValueError(f"label map {tuple(target.labels.shape)} does not match {size}")
    device = smoothed.device
    points = target.points.to(device=device, dtype=torch.float32).reshape(-1, 2)
    radii = nnec_radii(points.detach().cpu().numpy(), size, cfg.r_min, duplicates="distinct")
    pixels = circle_pixels(points, torch.from_numpy(radii).to(device), size)
    y, x, point = pixels.y, pixels.x, pixels.point
    labels = target.labels.to(device)
    if target.ignore is not None:
        keep = ~target.ignore.to(device)[y, x]
        y, x, point = y[keep], x[keep], point[keep]
    centres = sample_centres(smoothed, points)
    diff = smoothed[:, y, x].transpose(0, 1) - centres[point]
    dist = torch.sqrt((diff * diff).sum(dim=1).clamp(min=1e-12))
    positive = labels[y, x].long() == target.instance.to(device).long()[point]
    hinge = torch.where(
        positive,
        (dist - (cfg.tau - cfg.delta)).clamp(min=0),
        (cfg.margin - dist).clamp(min=0),
    )
    return _Terms(hinge, positive, point, len(points))


def _bases(terms: list[_Terms]) -> list[int]:
    """Offset of each image's centres in the batch-wide numbering."""
    bases, total = [], 0
    for t in terms:
        bases.append(total)
        total += t.n
    return bases


def _mean_by(
    values: Tensor, index: Tensor, n: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` per index (``weight``: which entries count); ``(means, non-empty)``."""
    count = torch.zeros(n, dtype=values.dtype, device=values.device)
    ones = torch.ones_like(values) if weight is None else weight.to(values.dtype)
    count.index_add_(0, index, ones)
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, index, values)
    return total / count.clamp(min=1), count > 0


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``, 0 when empty."""
    return values[mask].sum() / mask.sum().clamp(min=1)
