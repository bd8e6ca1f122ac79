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

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from xmask.data.augment import ViewBatch
from xmask.losses.p2r import p2r_loss
from xmask.models.count_head import decode_points
from xmask.models.model import XMaskModel, build_model, param_groups
from xmask.train.config import TrainConfig
from xmask.train.distributed import DistInfo, sync_buffers
from xmask.train.ema import EMATeacher


@dataclass
class StepStats:
    """What one step measured.

    Attributes:
        loss: the combined loss.
        sup: the labeled P2R loss.
        semi: the unlabeled P2R loss (None when the branch did not run).
        pseudo_points: teacher points used this step.
        unmatched_points: labeled points that owned no cell (P2R drops them).
        pseudo_mask_seconds: time spent making the teacher's pseudo-masks (smoothing and
            Eq. 11–12), the pseudo-label overhead of Stages 2 and 3.
        extras: other per-step values to log (averaged per epoch in ``metrics.jsonl``).
    """

    loss: float
    sup: float
    semi: float | None
    pseudo_points: int
    unmatched_points: int
    pseudo_mask_seconds: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)


class TeacherStudent:
    """What every stage's step holds: the student, its EMA teacher, Adam over the student's
    trainable parameters, and the network to call (the student, or DDP around it).

    Args:
        cfg: the run's configuration (``optim``, ``teacher``).
        student: the network being trained, on ``device``.
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
        buffers: the teacher's buffer mode (:class:`xmask.train.ema.EMATeacher`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        student: XMaskModel,
        device: torch.device,
        dist_info: DistInfo,
        buffers: str,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info
        self.device = device
        self.student = student
        self.teacher = EMATeacher(student, cfg.teacher.momentum, buffers)
        self.optimizer = torch.optim.Adam(
            param_groups(student, cfg.optim.lr, cfg.optim.backbone_lr),
            weight_decay=cfg.optim.weight_decay,
        )
        self.frozen: list[nn.Module] = []
        self.network: nn.Module = student
        if dist_info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.network = DistributedDataParallel(student, device_ids=ids)

    def train_mode(self) -> None:
        """The student in training mode, except its ``frozen`` modules (eval mode: fixed
        BatchNorm statistics)."""
        self.student.train()
        for module in self.frozen:
            module.eval()

    def update(self, loss: torch.Tensor, teacher_momentum: float | None) -> None:
        """Backward, clip, Adam step, rank-0 buffer sync and one EMA step of the teacher
        (``teacher_momentum`` overrides the configured momentum; 0 copies the student)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        sync_buffers(self.student, self.dist)
        self.teacher.update(self.student, teacher_momentum)


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


class MeanTeacherStep(TeacherStudent):
    """Stage 1: student, teacher and optimizer, and the step that updates them.

    Args:
        cfg: the run's configuration (model, optim, teacher, p2r).
        device: where the networks live.
        dist_info: this process's rank; with several ranks the student is wrapped in DDP.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None:
        torch.manual_seed(cfg.seed)
        student = build_model(cfg.model).to(device)
        super().__init__(cfg, student, device, dist_info, cfg.teacher.buffers)

    def pseudo_points(self, weak: ViewBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher points on the weak view and their loss weights (:func:`teacher_points`)."""
        logits = self.teacher.predict(weak.images).logits
        sync_buffers(self.teacher.model, self.dist)
        return teacher_points(logits, weak.valid, self.cfg)

    def __call__(
        self,
        labeled: ViewBatch,
        unlabeled: tuple[ViewBatch, ViewBatch] | None,
        weight: float,
        teacher_momentum: float | None = None,
    ) -> StepStats:
        """One optimiser step; ``unlabeled`` is used only when ``weight > 0``;
        ``teacher_momentum`` overrides the EMA momentum of this step (0: copy the student)."""
        cfg = self.cfg
        labeled = labeled.to(self.device)
        images = labeled.images
        semi_batch = None
        if unlabeled is not None and weight > 0:
            weak, strong = (part.to(self.device) for part in unlabeled)
            semi_batch = (strong, *self.pseudo_points(weak))
            images = torch.cat([images, strong.images])
        logits = self.network(images).logits
        n_lab = labeled.images.shape[0]
        sup = p2r_loss(logits[:n_lab], labeled.points, labeled.valid, cfg=cfg.p2r)
        loss, semi_value, pseudo = sup.loss, None, 0
        if semi_batch is not None:
            strong, points, weights = semi_batch
            semi = semi_p2r(logits[n_lab:], strong, points, weights, cfg)
            loss = (loss + weight * semi) / (1.0 + weight)
            semi_value, pseudo = float(semi.detach()), sum(len(p) for p in points)
        self.update(loss, teacher_momentum)
        return StepStats(
            float(loss.detach()), float(sup.loss.detach()), semi_value, pseudo, sup.unmatched_points
        )
