"""What every training stage shares: the :class:`Stage` protocol the trainer and the pipeline
loop over, the teacher–student pair with its optimizer, and the statistics a step reports.

A stage is one class (Stage 1 :class:`~xmask.train.stages.p2r.MeanTeacherStep`, Stage 2
:class:`~xmask.train.stages.mask.MaskStep`, Stage 3
:class:`~xmask.train.stages.constraint.ConstraintStep`) built from the run's config. Every
optimiser step is the same three calls (:func:`run_step`): :meth:`TeacherStudent.batch` puts
the labeled views (and, when the unlabeled weight is positive, the unlabeled weak/strong views)
on the device as a :class:`StepBatch`; the stage's own ``loss`` turns it into the loss and the
:class:`StepStats` to log; :meth:`TeacherStudent.update` steps the student and the EMA teacher.
A stage writes only ``loss``; adding a fourth stage is one more class registered in
:data:`xmask.train.stages.STAGES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from xmask.data.augment import ViewBatch
from xmask.device import DistInfo
from xmask.errors import XmaskError
from xmask.models.model import XMaskModel, build_model, param_groups
from xmask.train.config import TrainConfig
from xmask.train.distributed import sync_buffers
from xmask.train.ema import EMATeacher
from xmask.train.run_folder import load_trained_model

log = logging.getLogger(__name__)


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


Unlabeled = tuple[ViewBatch, ViewBatch] | None
"""The unlabeled ``(weak, strong)`` views of a step, or None."""


@dataclass
class StepBatch:
    """One step's views, on the stage's device.

    Attributes:
        labeled: the labeled crops (points, and label maps from Stage 2 on).
        unlabeled: the unlabeled ``(weak, strong)`` views, or None when the unlabeled weight
            is 0 (the branch does not run).
        weight: the unlabeled weight ``w``; the loss is ``(L_sup + w·L_semi) / (1 + w)``.
    """

    labeled: ViewBatch
    unlabeled: Unlabeled
    weight: float


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

    def batch(self, labeled: ViewBatch, unlabeled: Unlabeled, weight: float) -> StepBatch:
        """The modules in training mode (:meth:`train_mode`) and the views on the device; the
        unlabeled views only when ``weight > 0``."""
        self.train_mode()
        views = None
        if unlabeled is not None and weight > 0:
            views = (unlabeled[0].to(self.device), unlabeled[1].to(self.device))
        return StepBatch(labeled.to(self.device), views, weight)

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


@runtime_checkable
class Stage(Protocol):
    """One training stage: built from the run's config, then per optimiser step
    :meth:`batch` → :meth:`loss` → :meth:`update` (:func:`run_step`).

    Class attributes:
        number: the ``stage`` value of the configs that run it (1, 2, 3, ...).
        init_key: the config key naming the earlier run it starts from (``mask.init``), or
            None for a stage that starts from ImageNet weights.
        needs_label_maps: its labeled images need annotation label maps (``xmask annotate``).
    """

    number: ClassVar[int]
    init_key: ClassVar[str | None]
    needs_label_maps: ClassVar[bool]
    student: XMaskModel
    teacher: EMATeacher
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> None: ...

    def batch(self, labeled: ViewBatch, unlabeled: Unlabeled, weight: float) -> StepBatch:
        """The step's views on the device (:meth:`TeacherStudent.batch`)."""
        ...

    def loss(self, batch: StepBatch) -> tuple[torch.Tensor, StepStats]:
        """The loss to minimise and what to log of it."""
        ...

    def update(self, loss: torch.Tensor, teacher_momentum: float | None) -> None:
        """Optimiser step of the student, EMA step of the teacher."""
        ...


def run_step(
    stage: Stage,
    labeled: ViewBatch,
    unlabeled: Unlabeled,
    weight: float,
    teacher_momentum: float | None = None,
) -> StepStats:
    """One optimiser step of ``stage``: ``unlabeled`` is used only when ``weight > 0``;
    ``teacher_momentum`` overrides the EMA momentum of this step (0: copy the student)."""
    loss, stats = stage.loss(stage.batch(labeled, unlabeled, weight))
    stage.update(loss, teacher_momentum)
    return stats


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam-style per-parameter state as ``optim.{index}.{key}`` tensors."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"optim.{index}.{key}"] = tensor
    return out


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore per-parameter state written by :func:`optimizer_tensors` (groups unchanged)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    current = optimizer.state_dict()
    current["state"] = state
    optimizer.load_state_dict(current)


FRESH_FIELDS = {"mask_head": ("mask_channels", "embed_dim"), "offset_head": ("offset_channels",)}
"""The heads a stage may add to the network it starts from, and their own size fields."""

PARTS = ("backbone", "neck", "count_head", "mask_head", "offset_head")
"""The top-level parts of an :class:`~xmask.models.model.XMaskModel` a stage trains or freezes."""


def load_start(
    cfg: TrainConfig,
    key: str,
    device: torch.device,
    fresh: str | None = None,
    needs: str | None = None,
) -> XMaskModel:
    """The student a later stage starts from: the teacher of the run ``init``.

    The architecture is that run's (``cfg.model`` takes it over, keeping the size fields of a
    fresh head), so the new run's ``config.yaml`` describes the network it saves.

    Args:
        cfg: the new run's configuration (``cfg.model`` is replaced).
        key: the config key naming the earlier run (``mask.init``: its folder,
            ``checkpoints/``, ``best/`` or a weights file).
        fresh: a head to add new (``mask_head``: Stage 2; ``offset_head``: Stage 4; seeded by
            ``cfg.seed``) on the earlier network; every other weight is loaded.
        needs: a head the earlier run must have (``mask_head`` for Stage 3).

    Raises:
        XmaskError: no ``init``, or an earlier run without the head the stage needs.
    """
    section, field_name = key.split(".")
    init = getattr(getattr(cfg, section), field_name)
    if init is None:
        raise XmaskError(f"stage {cfg.stage} needs {key}: the run it starts from")
    earlier, earlier_cfg = load_trained_model(init, device, which="teacher")
    if needs is not None and not getattr(earlier_cfg.model, needs):
        raise XmaskError(f"{init}: stage {cfg.stage} needs a run with a {needs.replace('_', ' ')}")
    model_cfg = replace(earlier_cfg.model, weights=None)
    if fresh is not None:
        sizes = {name: getattr(cfg.model, name) for name in FRESH_FIELDS[fresh]}
        model_cfg = replace(model_cfg, **{fresh: True}, **sizes)
    cfg.model = model_cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    state = earlier.state_dict()
    if fresh is not None:
        state = {k: v for k, v in state.items() if not k.startswith(f"{fresh}.")}
    model.load_state_dict(state, strict=fresh is None)
    log.info("stage %d starts from the teacher of %s", cfg.stage, init)
    return model


def freeze_except(
    model: XMaskModel, trainable: list[str], allowed: tuple[str, ...]
) -> list[nn.Module]:
    """Freeze every top-level part of ``model`` (:data:`PARTS`) not named in ``trainable`` (a
    non-empty subset of ``allowed``); returns the frozen modules (to be kept in eval mode)."""
    unknown = set(trainable) - set(allowed)
    if unknown or not trainable:
        raise XmaskError(f"trainable modules must be a non-empty subset of {allowed}: {trainable}")
    frozen = []
    for name in PARTS:
        module = getattr(model, name)
        if module is None:
            continue
        module.requires_grad_(name in trainable)
        if name not in trainable:
            frozen.append(module)
    return frozen
