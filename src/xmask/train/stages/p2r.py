"""One Mean Teacher optimiser step of Stage 1: the student, its EMA teacher and the optimizer.

Labeled crops (geometry-only augmentation) are supervised by their points under the P2R loss.
When the unlabeled weight ``w`` is positive, the teacher sees the weak view of the unlabeled
crops; its cells with logit >= ``teacher.pseudo_logit`` outside padding become pseudo points;
the strong view goes through the student together with the labeled crops (one forward pass:
one BatchNorm batch, one DDP forward) and is supervised by the pseudo points under the P2R loss
with cutout and padding cells excluded. The loss is ``(L_sup + w·L_semi) / (1 + w)``; then
Adam with gradient clipping, rank-0 buffer sync (DDP) and one EMA update of the teacher.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import ClassVar

import torch

from xmask.data.augment import ViewBatch
from xmask.device import DistInfo
from xmask.inference.loading import load_inference_model
from xmask.losses.p2r import p2r_loss
from xmask.models.count_head import decode_points
from xmask.models.model import XMaskModel, build_model
from xmask.train.config import TrainConfig
from xmask.train.distributed import sync_buffers
from xmask.train.stages.base import StepBatch, StepStats, TeacherStudent

log = logging.getLogger(__name__)


def teacher_points(
    logits: torch.Tensor, valid: torch.Tensor, cfg: TrainConfig
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The P2R pseudo points of a teacher's ``B×1×h×w`` logits: cells with logit >=
    ``teacher.pseudo_logit`` whose pixel is valid (``B×H×W``, not padding), as ``N_b×2``
    ``(x, y)``; and their loss weights (1, or 0 where the probability is at most
    ``teacher.min_confidence``)."""
    decoded = decode_points(logits, threshold=cfg.teacher.pseudo_logit, inclusive=True)
    points, weights = [], []
    h, w = valid.shape[-2:]
    for b, found in enumerate(decoded):
        cols = found.points[:, 0].long().clamp(max=w - 1)
        rows = found.points[:, 1].long().clamp(max=h - 1)
        keep = valid[b, rows, cols]
        points.append(found.points[keep])
        weights.append((found.scores[keep] > cfg.teacher.min_confidence).float())
    return points, weights


def semi_p2r(
    logits: torch.Tensor,
    strong: ViewBatch,
    points: list[torch.Tensor],
    weights: list[torch.Tensor],
    cfg: TrainConfig,
) -> torch.Tensor:
    """The unlabeled P2R loss of the student's strong-view logits against teacher points
    (cutout and padding cells excluded; point weights only with ``teacher.min_confidence``)."""
    return p2r_loss(
        logits,
        points,
        strong.valid,
        point_weights=weights if cfg.teacher.min_confidence > 0 else None,
        cfg=cfg.p2r,
    ).loss


def load_counter(cfg: TrainConfig, device: torch.device) -> XMaskModel:
    """Fine-tuning: the counter (backbone, neck, count head) of the model or run ``cfg.init``
    as a fresh Stage-1 network; its architecture replaces ``cfg.model`` (so the run's
    ``config.yaml`` describes what it saves) and any mask or offset head is left out."""
    loaded = load_inference_model(cfg.init, device)
    source = loaded.model.cfg
    cfg.model = replace(source, weights=None, mask_head=False, offset_head=False)
    model = build_model(cfg.model).to(device)
    parts = ("backbone.", "neck.", "count_head.")
    state = {k: v for k, v in loaded.model.state_dict().items() if k.startswith(parts)}
    model.load_state_dict(state, strict=True)
    log.info("stage 1 starts from the counter of %s", loaded.source)
    return model


class MeanTeacherStep(TeacherStudent):
    """Stage 1: student, teacher and optimizer, and the step that updates them.

    Args:
        cfg: the run's configuration (model, optim, teacher, p2r).
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
    """

    number: ClassVar[int] = 1
    init_key: ClassVar[str | None] = None
    needs_label_maps: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None:
        torch.manual_seed(cfg.seed)
        student = (
            build_model(cfg.model).to(device) if cfg.init is None else load_counter(cfg, device)
        )
        super().__init__(cfg, student, device, dist_info, cfg.teacher.buffers)

    def pseudo_points(self, weak: ViewBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher points on the weak view and their loss weights (:func:`teacher_points`)."""
        logits = self.teacher.predict(weak.images).logits
        sync_buffers(self.teacher.model, self.dist)
        return teacher_points(logits, weak.valid, self.cfg)

    def loss(self, batch: StepBatch) -> tuple[torch.Tensor, StepStats]:
        """P2R on the labeled points, plus ``w·`` P2R against the teacher's points on the
        strong view (module docstring)."""
        cfg, labeled = self.cfg, batch.labeled
        images = labeled.images
        semi_batch = None
        if batch.unlabeled is not None:
            weak, strong = batch.unlabeled
            semi_batch = (strong, *self.pseudo_points(weak))
            images = torch.cat([images, strong.images])
        logits = self.network(images).logits
        n_lab = labeled.images.shape[0]
        sup = p2r_loss(logits[:n_lab], labeled.points, labeled.valid, cfg=cfg.p2r)
        loss, semi_value, pseudo = sup.loss, None, 0
        if semi_batch is not None:
            strong, points, weights = semi_batch
            semi = semi_p2r(logits[n_lab:], strong, points, weights, cfg)
            loss = (loss + batch.weight * semi) / (1.0 + batch.weight)
            semi_value, pseudo = float(semi.detach()), sum(len(p) for p in points)
        stats = StepStats(
            float(loss.detach()), float(sup.loss.detach()), semi_value, pseudo, sup.unmatched_points
        )
        return loss, stats
