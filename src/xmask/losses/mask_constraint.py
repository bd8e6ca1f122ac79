"""Mask-constraint losses of Stage 3 (paper Eq. 13–15): the count map obeys the instance masks.

``f̂`` is the stride-4 logit map upsampled bilinearly to the image, cropped to ``H×W``: cell
``(i, j)``'s value sits at its centre ``(x, y) = (4j + 2, 4i + 2)`` (:mod:`xmask.geometry`).
With ``M`` an instance label map, ``Ω_0 = {M = 0}`` and ``Ω_k = {M = k}``:

- background penalty (Eq. 13): ``L_bg = mean_{p ∈ Ω_0} max(0, f̂(p))``;
- foreground constraint (Eq. 14–15): ``L_fg = mean_{k ∈ K_v} |N_k⁺ − 1| + λ·|S_k − 1|`` with
  ``S_k = Σ_{Ω_k} max(0, f̂)`` and ``N_k⁺ = #{p ∈ Ω_k : f̂(p) > 0}``.

Where ``f̂`` is read (``sample``): ``"cells"`` (the default): at the cell centres only, where
``f̂`` equals the stride-4 logits, so ``Ω_k`` is the cells whose centre lies in instance ``k``
(the pixel ``(4i + 2, 4j + 2)``, clamped to the image), ``N_k⁺`` counts exactly the heads the
counter counts in that instance and ``S_k`` is the positive logit mass there (the authors'
code also measures ``S_k`` in stride-4 mass); or ``"pixels"``: at every pixel, Eq. 13–15 read
literally. A P2R counter's positive cells are narrow peaks, about 1 positive pixel each when
upsampled, so per pixel the gradients of ``S_k`` dwarf the P2R loss (a mean over every cell)
at the authors' weights, while per cell they are of the same size. On ShanghaiTech B 40 %
(CPU recipes, 750 Stage-3 steps, docs/stage3-experiments.md) reading at the cell centres
lowered the MAE on the 240 unlabeled training images from 13.97 (Stage 1) to 13.59; reading at
every pixel raised it to 23.55.

``N_k⁺`` as printed has no gradient. The loss uses a surrogate (``count``):
``"straight_through"`` (default): the value is the literal count, the gradient that of the
soft count ``Σ_{Ω_k} σ(f̂/T)``, so ``|N_k⁺ − 1|`` has the literal value and pushes every pixel
of ``Ω_k`` up when the head has no positive pixel and down when it has too many;
``"sigmoid"``: the soft count itself, value and gradient. The literal ``N_k⁺`` and the literal
``L_fg`` are always returned for logging.

Pixels marked ``ignore`` (padding, cutout) are in no ``Ω``; an instance with an ignored pixel,
an empty ``Ω_k`` or not marked valid is not in ``K_v``. Each term is the per-image value of
Eq. 13 / 14 averaged over the images where it is defined (non-empty ``Ω_0`` / ``K_v``); with
none, it is 0, still attached to the logits. Work and memory are ``O(H·W)`` per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as nnf

from xmask.models.count_head import COUNT_STRIDE as STRIDE

CountSurrogate = Literal["straight_through", "sigmoid"]
Sampling = Literal["pixels", "cells"]


@dataclass
class ConstraintConfig:
    """Constants of Eq. 13–15 and their weights in the Stage-3 loss (``docs/equations.md``).

    Attributes:
        bg_weight: weight of ``L_bg`` (authors: SHA 40 % 0.1, SHA 5/10 % 0, UCF 5 % 0.05).
        fg_weight: weight of ``L_fg`` (authors: SHA 0.005, UCF 5 % 0.0025).
        lam: ``λ`` of Eq. 14.
        count: surrogate of ``N_k⁺`` (module docstring).
        temperature: ``T`` of the soft count ``σ(f̂/T)``.
        sample: where ``f̂`` is read: ``"cells"`` or ``"pixels"`` (module docstring).
    """

    bg_weight: float = 0.1
    fg_weight: float = 0.005
    lam: float = 1.0
    count: CountSurrogate = "straight_through"
    temperature: float = 1.0
    sample: Sampling = "cells"

    def __post_init__(self) -> None:
        if self.count not in ("straight_through", "sigmoid"):
            raise ValueError(f"count must be straight_through or sigmoid, got {self.count!r}")
        if self.sample not in ("cells", "pixels"):
            raise ValueError(f"sample must be cells or pixels, got {self.sample!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass
class ConstraintTarget:
    """One image's masks for Eq. 13–15.

    Attributes:
        labels: ``H×W`` integer label map ``M`` (0 background, ``k`` instance ``k``).
        valid: ``K bool``: instance ``k`` is in ``K_v`` when ``valid[k − 1]`` (``K`` >= the
            largest label), or None: every instance is valid (annotation masks).
        ignore: ``H×W bool``: pixels in no ``Ω``, or None.
    """

    labels: Tensor
    valid: Tensor | None = None
    ignore: Tensor | None = None


@dataclass
class ConstraintResult:
    """The two terms and what to log.

    Attributes:
        bg: ``L_bg`` (Eq. 13), differentiable scalar.
        fg: ``L_fg`` (Eq. 14) with the surrogate ``N_k⁺``, differentiable scalar.
        fg_literal: ``L_fg`` with the literal ``N_k⁺`` (detached).
        positives: mean literal ``N_k⁺`` over the valid instances (detached).
        instances: valid instances of the batch (``Σ |K_v|``).
        background: background pixels of the batch (``Σ |Ω_0|``).
    """

    bg: Tensor
    fg: Tensor
    fg_literal: Tensor
    positives: Tensor
    instances: int
    background: int

    def weighted(self, cfg: ConstraintConfig) -> Tensor:
        """``bg_weight·L_bg + fg_weight·L_fg``."""
        return cfg.bg_weight * self.bg + cfg.fg_weight * self.fg


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``f̂``: ``B×1×h×w`` stride-4 logits → ``B×H×W`` (``size``), bilinear with cell ``(i, j)``
    at its centre ``(x, y) = (4j + 2, 4i + 2)``: ``align_corners=False`` at scale 4, cropped."""
    h, w = logits.shape[-2:]
    full = nnf.interpolate(
        logits.float(), size=(STRIDE * h, STRIDE * w), mode="bilinear", align_corners=False
    )
    return full[:, 0, : size[0], : size[1]]


def at_cell_centres(target: ConstraintTarget, grid: tuple[int, int]) -> ConstraintTarget:
    """``target`` read at the centres of a ``grid = (h, w)`` of stride-4 cells: the pixel
    ``(4i + 2, 4j + 2)`` of each cell, clamped to the image."""
    height, width = target.labels.shape
    device = target.labels.device
    rows = (STRIDE * torch.arange(grid[0], device=device) + STRIDE // 2).clamp(max=height - 1)
    cols = (STRIDE * torch.arange(grid[1], device=device) + STRIDE // 2).clamp(max=width - 1)
    ignore = None if target.ignore is None else target.ignore[rows][:, cols]
    return ConstraintTarget(target.labels[rows][:, cols], target.valid, ignore)


def mask_constraint_loss(
    logits: Tensor,
    targets: list[ConstraintTarget],
    cfg: ConstraintConfig | None = None,
) -> ConstraintResult:
    """Eq. 13–15 over a batch (module docstring).

    Args:
        logits: ``B×1×h×w`` stride-4 count logits (``h = ceil(H/4)``).
        targets: ``B`` :class:`ConstraintTarget` with ``H×W`` label maps.
        cfg: constants (defaults: :class:`ConstraintConfig`).
    """
    cfg = cfg if cfg is not None else ConstraintConfig()
    if len(targets) != logits.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]}")
    size = (int(targets[0].labels.shape[0]), int(targets[0].labels.shape[1]))
    if cfg.sample == "cells":
        f = logits[:, 0].float()
        targets = [at_cell_centres(t, (int(f.shape[1]), int(f.shape[2]))) for t in targets]
    else:
        f = upsample_logits(logits, size)
    terms = [_image_terms(f[b], t, cfg) for b, t in enumerate(targets)]
    anchor = 0.0 * logits.sum()
    bg = [t.bg for t in terms if t.bg is not None]
    fg = [t for t in terms if t.instances > 0]
    zero = anchor.detach()
    return ConstraintResult(
        bg=torch.stack(bg).mean() + anchor if bg else anchor,
        fg=torch.stack([t.fg for t in fg]).mean() + anchor if fg else anchor,
        fg_literal=torch.stack([t.fg_literal for t in fg]).mean() if fg else zero,
        positives=torch.cat([t.positives for t in fg]).mean() if fg else zero,
        instances=sum(t.instances for t in terms),
        background=sum(t.background for t in terms),
    )


@dataclass
class _ImageTerms:
    bg: Tensor | None
    fg: Tensor
    fg_literal: Tensor
    positives: Tensor
    instances: int
    background: int


def _image_terms(f: Tensor, target: ConstraintTarget, cfg: ConstraintConfig) -> _ImageTerms:
    """Eq. 13–15 of one image (``f``: upsampled logits, or the logits at cell centres, with a
    ``target`` of the same shape)."""
    if tuple(target.labels.shape) != tuple(f.shape):
        raise ValueError(f"label map {tuple(target.labels.shape)} does not match {tuple(f.shape)}")
    labels = target.labels.to(f.device).long().reshape(-1)
    ignore = None if target.ignore is None else target.ignore.to(f.device).reshape(-1)
    k = int(labels.max()) if labels.numel() else 0
    flat = f.reshape(-1)
    relu = flat.clamp(min=0)
    background = labels == 0 if ignore is None else (labels == 0) & ~ignore
    n_bg = int(background.sum())
    bg = relu[background].mean() if n_bg else None
    area = torch.zeros(k + 1, device=f.device).index_add_(0, labels, torch.ones_like(flat))
    valid = area > 0
    valid[0] = False
    if target.valid is not None:
        given = target.valid.to(f.device).bool().reshape(-1)
        if given.numel() < k:
            raise ValueError(f"valid has {given.numel()} entries for labels up to {k}")
        valid[1:] &= given[:k]
    if ignore is not None:
        touched = torch.zeros(k + 1, device=f.device).index_add_(0, labels, ignore.float())
        valid &= touched == 0
    mass = torch.zeros(k + 1, device=f.device).index_add(0, labels, relu)
    literal = torch.zeros(k + 1, device=f.device).index_add_(0, labels, (flat > 0).float())
    soft = torch.zeros(k + 1, device=f.device).index_add(
        0, labels, torch.sigmoid(flat / cfg.temperature)
    )
    count = literal + (soft - soft.detach()) if cfg.count == "straight_through" else soft
    keep = valid.nonzero().squeeze(1)
    per = (count[keep] - 1).abs() + cfg.lam * (mass[keep] - 1).abs()
    per_literal = (literal[keep] - 1).abs() + cfg.lam * (mass[keep].detach() - 1).abs()
    return _ImageTerms(
        bg=bg,
        fg=per.mean() if len(keep) else flat.new_zeros(()),
        fg_literal=per_literal.mean() if len(keep) else flat.new_zeros(()),
        positives=literal[keep].detach(),
        instances=len(keep),
        background=n_bg,
    )
