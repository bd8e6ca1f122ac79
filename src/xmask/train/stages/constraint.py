"""One optimiser step of Stage 3: mask-constrained counting (paper Sec. 3.3, Eq. 13–15).

The student and its EMA teacher start from a Stage-2 teacher (``constraint.init``); only
``constraint.trainable`` modules train (default: the count head, the paper's "decoder"), the
others are frozen in eval mode, the teacher runs in eval mode with its buffers copied from the
student (as in Stage 2).

Labeled crops: the P2R loss on their points plus the mask-constraint terms on their annotation
label maps (every instance valid; padding ignored). Unlabeled crops (when the unlabeled weight
``w > 0``): the teacher's weak-view output gives the P2R pseudo points (as in Stage 1) and the
pseudo-masks (as in Stage 2: cells with ``p >= mask.p_low`` segmented, valid where
``p > mask.p_high``, optional density gate ``constraint.gate``), made afresh every step from
the current teacher; the student's strong view gets the P2R loss and the mask-constraint terms
(cutout and padding ignored). The loss is ``(L_sup + w·L_semi) / (1 + w)`` with
``L = P2R + bg_weight·L_bg + fg_weight·L_fg`` on each side.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from xmask.data.augment import ViewBatch
from xmask.device import DistInfo
from xmask.errors import XmaskError
from xmask.losses.mask_constraint import ConstraintResult, ConstraintTarget, mask_constraint_loss
from xmask.losses.p2r import p2r_loss
from xmask.train.config import TrainConfig
from xmask.train.stages.base import (
    StepBatch,
    StepStats,
    TeacherStudent,
    freeze_except,
    load_start,
)
from xmask.train.stages.mask import check_thresholds, teacher_pseudo_masks
from xmask.train.stages.p2r import semi_p2r, teacher_points

TRAINABLE = ("backbone", "neck", "count_head")
"""Modules Stage 3 may train (the mask head gets no gradient from the Stage-3 losses)."""


class ConstraintStep(TeacherStudent):
    """Student, teacher and optimizer of Stage 3, and the step that updates them.

    Args:
        cfg: the run's configuration (``model``, ``optim``, ``teacher``, ``p2r``, ``mask``,
            ``constraint``).
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
    """

    number: ClassVar[int] = 3
    init_key: ClassVar[str | None] = "constraint.init"
    needs_label_maps: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None:
        check_thresholds(cfg.mask)
        student = load_start(cfg, self.init_key, device, needs="mask_head")
        frozen = freeze_except(student, cfg.constraint.trainable, TRAINABLE)
        buffers = "copy" if cfg.teacher.buffers == "own" else cfg.teacher.buffers
        super().__init__(cfg, student, device, dist_info, buffers)
        self.frozen = frozen

    @torch.no_grad()
    def pseudo_labels(
        self, weak: ViewBatch, strong: ViewBatch
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[ConstraintTarget], float]:
        """Teacher pseudo points, their weights, pseudo-mask targets, and the seconds spent on
        the pseudo-masks."""
        out = self.teacher.predict(weak.images)
        points, weights = teacher_points(out.logits, weak.valid, self.cfg)
        size = (int(weak.images.shape[-2]), int(weak.images.shape[-1]))
        started = time.perf_counter()
        masks = teacher_pseudo_masks(out, size, self.cfg.mask, self.cfg.constraint.gate)
        targets = [
            ConstraintTarget(
                torch.from_numpy(pm.instances.labels).to(self.device),
                torch.from_numpy(pm.valid).to(self.device),
                ~(weak.valid[b] & strong.valid[b]),
            )
            for b, pm in enumerate(masks)
        ]
        return points, weights, targets, time.perf_counter() - started

    def loss(self, batch: StepBatch) -> tuple[torch.Tensor, StepStats]:
        """P2R and the mask-constraint terms on the labeled crops, plus ``w·`` the same against
        the teacher's points and pseudo-masks on the strong view (module docstring)."""
        cfg, labeled = self.cfg, batch.labeled
        if labeled.labels is None:
            raise XmaskError(f"labeled images without label maps: {labeled.names}")
        images, semi = labeled.images, None
        if batch.unlabeled is not None:
            weak, strong = batch.unlabeled
            semi = (strong, *self.pseudo_labels(weak, strong))
            images = torch.cat([images, strong.images])
        logits = self.network(images, with_embedding=False).logits
        n_lab = labeled.images.shape[0]
        sup = p2r_loss(logits[:n_lab], labeled.points, labeled.valid, cfg=cfg.p2r)
        lab_targets = [
            ConstraintTarget(labeled.labels[b], None, ~labeled.valid[b]) for b in range(n_lab)
        ]
        lab_mask = mask_constraint_loss(logits[:n_lab], lab_targets, cfg.constraint.loss)
        loss = sup.loss + lab_mask.weighted(cfg.constraint.loss)
        extras = _log("lab", lab_mask)
        semi_value, pseudo, seconds = None, 0, 0.0
        if semi is not None:
            strong, points, weights, targets, seconds = semi
            unl_mask = mask_constraint_loss(logits[n_lab:], targets, cfg.constraint.loss)
            semi_loss = semi_p2r(logits[n_lab:], strong, points, weights, cfg)
            semi_loss = semi_loss + unl_mask.weighted(cfg.constraint.loss)
            loss = (loss + batch.weight * semi_loss) / (1.0 + batch.weight)
            semi_value, pseudo = float(semi_loss.detach()), sum(len(p) for p in points)
            extras |= _log("unl", unl_mask)
        stats = StepStats(
            float(loss.detach()),
            float(sup.loss.detach()),
            semi_value,
            pseudo,
            sup.unmatched_points,
            seconds,
            extras,
        )
        return loss, stats


def _log(prefix: str, result: ConstraintResult) -> dict[str, float]:
    """What one side's mask-constraint terms log: ``L_bg``, ``L_fg`` (surrogate and literal
    ``N_k⁺``), the mean literal ``N_k⁺`` and the valid instances."""
    return {
        f"{prefix}_bg": float(result.bg.detach()),
        f"{prefix}_fg": float(result.fg.detach()),
        f"{prefix}_fg_literal": float(result.fg_literal),
        f"{prefix}_positives": float(result.positives),
        f"{prefix}_instances": float(result.instances),
    }
