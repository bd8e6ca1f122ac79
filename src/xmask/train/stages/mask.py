"""One optimiser step of Stage 2 (XMask): the mask head learns the discriminative loss.

The student starts from a Stage-1 teacher with a fresh mask head; only ``mask.trainable``
modules train, the others are frozen and kept in eval mode (BatchNorm statistics fixed). The
teacher is the EMA of the student; it runs in eval mode (its buffers follow the student's:
``teacher.buffers`` ``own`` is read as ``copy`` here, since a frozen backbone must normalise
the same way in both networks).

Labeled crops: the student's smoothed embedding ``Ẽ`` (Eq. 2–5) is supervised by the
annotation label map, with centres from ``mask.centres``; pixels outside the crop's valid
area are ignored. Unlabeled crops (when the unlabeled weight ``w > 0``): the teacher sees the
weak view; its points with ``p >= p_low`` are segmented into a pseudo label map (Eq. 11–12,
``mask.pseudo``), the points with ``p > p_high`` are the centres, and disks of
``ignore_radius`` around the points in between are ignored, as is everything outside the
valid area; the student's strong view is supervised by that. The loss is
``(L_sup + w·L_semi) / (1 + w)``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar

import numpy as np
import torch

from xmask.data.augment import ViewBatch
from xmask.device import DistInfo
from xmask.errors import XmaskError
from xmask.losses.discriminative import MaskTarget, centres_on_instances, discriminative_loss
from xmask.models.count_head import decode_points
from xmask.segment.instances import (
    PseudoMasks,
    ignore_disks,
    pseudo_masks,
    smoothed_for_segmentation,
)
from xmask.segment.smoothing import GaussianSmoothing, smoothed_embedding
from xmask.train.config import MaskStageConfig, TrainConfig
from xmask.train.stages.base import (
    StepBatch,
    StepStats,
    TeacherStudent,
    freeze_except,
    load_start,
)
from xmask.types import ModelOutput

log = logging.getLogger(__name__)

TRAINABLE = ("mask_head", "neck")
"""Modules Stage 2 may train."""


@torch.no_grad()
def teacher_pseudo_masks(
    out: ModelOutput, size: tuple[int, int], cfg: MaskStageConfig, gate: float | None = None
) -> list[PseudoMasks]:
    """Pseudo-masks of a teacher's output on ``B`` weak views of ``size`` (Fig. 5): every cell
    with ``p >= cfg.p_low`` segmented with ``cfg.pseudo`` (Eq. 11–12, overlaps to the lowest
    energy), valid where ``p > cfg.p_high``; ``gate``: the density gate
    (:func:`xmask.segment.instances.pseudo_masks`)."""
    if out.embedding is None:
        raise XmaskError("pseudo-masks need a teacher with a mask head")
    low = math.log(cfg.p_low / (1.0 - cfg.p_low))
    masks = []
    for b, found in enumerate(decode_points(out.logits, threshold=low, inclusive=True)):
        table = smoothed_for_segmentation(out.embedding[b], size, cfg.pseudo)
        masks.append(
            pseudo_masks(
                table, found.points, found.scores, cfg.p_low, cfg.p_high, gate, cfg=cfg.pseudo
            )
        )
    return masks


def check_thresholds(cfg: MaskStageConfig) -> None:
    """``p_low`` in (0, 1) and ``p_high`` in [0, 1)."""
    if not (0.0 < cfg.p_low < 1.0 and 0.0 <= cfg.p_high < 1.0):
        raise XmaskError(
            f"mask.p_low must lie in (0, 1) and mask.p_high in [0, 1): {cfg.p_low}, {cfg.p_high}"
        )


class MaskStep(TeacherStudent):
    """Student, teacher and optimizer of Stage 2, and the step that updates them.

    Args:
        cfg: the run's configuration (``model``, ``optim``, ``teacher``, ``mask``).
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
    """

    number: ClassVar[int] = 2
    init_key: ClassVar[str | None] = "mask.init"
    needs_label_maps: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None:
        check_thresholds(cfg.mask)
        student = load_start(cfg, self.init_key, device, fresh="mask_head")
        frozen = freeze_except(student, cfg.mask.trainable, TRAINABLE)
        buffers = "copy" if cfg.teacher.buffers == "own" else cfg.teacher.buffers
        super().__init__(cfg, student, device, dist_info, buffers)
        self.frozen = frozen
        dim = cfg.model.embed_dim
        self.smoothing = GaussianSmoothing(dim, cfg.mask.kernel, cfg.mask.sigma).to(device)

    def labeled_targets(self, batch: ViewBatch, logits: torch.Tensor) -> list[MaskTarget]:
        """Targets of the labeled crops (annotation label maps, ``mask.centres``)."""
        if batch.labels is None:
            raise XmaskError(f"labeled images without label maps: {batch.names}")
        predicted = decode_points(logits) if self.cfg.mask.centres == "predicted" else None
        targets = []
        for b, labels in enumerate(batch.labels):
            if predicted is not None:
                points, instance = centres_on_instances(predicted[b].points, labels)
            else:
                points = batch.points[b]
                instance = torch.arange(1, len(points) + 1, device=labels.device)
            targets.append(MaskTarget(points, instance, labels, ~batch.valid[b]))
        return targets

    @torch.no_grad()
    def pseudo_targets(self, weak: ViewBatch) -> tuple[list[MaskTarget], int, float]:
        """Teacher pseudo-masks of the weak views (module docstring); the centre count; the
        seconds spent on the pseudo-masks."""
        cfg = self.cfg.mask
        out = self.teacher.predict(weak.images)
        size = (int(weak.images.shape[-2]), int(weak.images.shape[-1]))
        started = time.perf_counter()
        targets, centres = [], 0
        for b, pm in enumerate(teacher_pseudo_masks(out, size, cfg)):
            inst = pm.instances
            middle = inst.points[~pm.valid]
            ignore = torch.from_numpy(ignore_disks(middle, size, cfg.ignore_radius))
            ignore = ignore.to(self.device) | ~weak.valid[b]
            index = np.flatnonzero(pm.valid)
            targets.append(
                MaskTarget(
                    torch.from_numpy(inst.points[index]),
                    torch.from_numpy(index + 1),
                    torch.from_numpy(inst.labels).to(self.device),
                    ignore,
                )
            )
            centres += len(index)
        return targets, centres, time.perf_counter() - started

    def loss(self, batch: StepBatch) -> tuple[torch.Tensor, StepStats]:
        """Eq. 10 on the labeled crops' label maps, plus ``w·`` Eq. 10 against the teacher's
        pseudo-masks on the strong view (module docstring)."""
        cfg, labeled = self.cfg, batch.labeled
        images, semi = labeled.images, None
        if batch.unlabeled is not None:
            weak, strong = batch.unlabeled
            semi = self.pseudo_targets(weak)
            images = torch.cat([images, strong.images])
        out = self.network(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        smoothed = smoothed_embedding(out.embedding, size, self.smoothing)
        n_lab = labeled.images.shape[0]
        targets = self.labeled_targets(labeled, out.logits[:n_lab])
        sup = discriminative_loss(smoothed[:n_lab], targets, cfg.mask.loss)
        loss, semi_value, centres, seconds = sup.loss, None, 0, 0.0
        if semi is not None:
            semi_targets, centres, seconds = semi
            unl = discriminative_loss(smoothed[n_lab:], semi_targets, cfg.mask.loss)
            loss = (loss + batch.weight * unl.loss) / (1.0 + batch.weight)
            semi_value = float(unl.loss.detach())
        stats = StepStats(
            float(loss.detach()), float(sup.loss.detach()), semi_value, centres, 0, seconds
        )
        return loss, stats
