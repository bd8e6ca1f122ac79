"""One optimiser step of Stage 4: the offset head learns where each head point lies.

The student starts from the teacher of an earlier run (``offset.init``, normally Stage 3) with a
fresh offset head (:mod:`xmask.models.offset_head`); every other part is frozen and kept in eval
mode, so the counter and the masks are exactly those of that run. On each labeled crop the P2R
assignment of the frozen counter (:func:`xmask.losses.p2r.p2r_loss`) names one positive cell
per head; the offset head is trained to point from that cell's centre to the head
(:func:`xmask.losses.offset.offset_loss`). The unlabeled branch does not take part.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from xmask.device import DistInfo
from xmask.losses.offset import offset_loss
from xmask.losses.p2r import p2r_loss
from xmask.train.config import TrainConfig
from xmask.train.stages.base import (
    StepBatch,
    StepStats,
    TeacherStudent,
    freeze_except,
    load_start,
)


class OffsetStep(TeacherStudent):
    """Student, teacher and optimizer of Stage 4, and its loss.

    Args:
        cfg: the run's configuration (``model``, ``optim``, ``teacher``, ``p2r``, ``offset``).
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
    """

    number: ClassVar[int] = 4
    init_key: ClassVar[str | None] = "offset.init"
    needs_label_maps: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None:
        student = load_start(cfg, self.init_key, device, fresh="offset_head")
        frozen = freeze_except(student, ["offset_head"], ("offset_head",))
        buffers = "copy" if cfg.teacher.buffers == "own" else cfg.teacher.buffers
        super().__init__(cfg, student, device, dist_info, buffers)
        self.frozen = frozen

    def loss(self, batch: StepBatch) -> tuple[torch.Tensor, StepStats]:
        """The offset loss on the positive cells of the labeled crops (module docstring)."""
        labeled = batch.labeled
        out = self.network(labeled.images, with_embedding=False)
        assigned = p2r_loss(out.logits, labeled.points, labeled.valid, cfg=self.cfg.p2r)
        assert assigned.positive_cells is not None and assigned.positive_points is not None
        loss = offset_loss(
            out.offsets, assigned.positive_cells, assigned.positive_points, self.cfg.offset.beta
        )
        value = float(loss.detach())
        extras = {"positives": float(assigned.positive_cells.numel())}
        return loss, StepStats(value, value, None, 0, assigned.unmatched_points, 0.0, extras)
