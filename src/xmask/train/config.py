"""Training configuration: dataclasses, YAML recipes (OmegaConf) and dotted overrides.

A recipe is a YAML file whose keys mirror :class:`TrainConfig`; ``base: other.yaml`` (a path
relative to the file, or a shipped recipe name; or a list of them, merged in order) is merged
first, so recipes state only what differs: ``base: [shb-40-cpu, stage2-cpu]`` is the
ShanghaiTech B 40 % data with the Stage-2 CPU schedule. Shipped recipes live in
``xmask/configs/`` and are addressed by name (``xmask train --config shb-40-cpu``).
Overrides are ``dotted.key=value`` strings (``schedule.epochs=10``). Every constant of the
method is a field here, never a literal in code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xmask.data.augment_config import AugmentConfig
from xmask.errors import XmaskError
from xmask.losses.discriminative import DiscriminativeConfig
from xmask.losses.mask_constraint import ConstraintConfig
from xmask.losses.p2r import P2RConfig
from xmask.models.model import ModelConfig
from xmask.segment.instances import SegmentConfig


class ConfigError(XmaskError):
    """A recipe file or override is missing or invalid."""


@dataclass
class DataConfig:
    """Which images train the model.

    Attributes:
        dataset: reader key (``sha``, ``shb``, ``ucf``, ``jhu``, ``folder``).
        root: dataset folder.
        labeled: labeled list: standard split name (``shb-40``) or list file; ``all``: every
            training image that is not held out for validation.
        unlabeled_pool: ``"all"`` (the authors: every training image is also drawn as
            unlabeled), ``"rest"`` (only the images not in the labeled list) or ``"none"``
            (supervised only).
        validation: optional list (a shipped name such as ``shanghaitech-val``, or a file) of
            training images held out from training and used for model selection; None
            selects the final EMA teacher. Never the test set.
        max_short_side: resize rule of the readers (paper: UCF 1536, JHU 2048).
        cache: keep decoded images in memory (per process).
        workers: DataLoader worker processes (0: load in the training process).
    """

    dataset: str = "sha"
    root: str = "../shared/data/shanghaitech"
    labeled: str = "sha-40"
    unlabeled_pool: str = "all"
    validation: str | None = None
    max_short_side: int | None = None
    cache: bool = True
    workers: int = 0


@dataclass
class OptimConfig:
    """Adam with a lower backbone learning rate, and gradient clipping.

    Attributes:
        lr: learning rate of the neck and heads.
        backbone_lr: learning rate of the backbone.
        weight_decay: Adam's L2 weight decay.
        grad_clip: clip the global gradient norm to this (0: no clipping).
    """

    lr: float = 5e-5
    backbone_lr: float = 1e-5
    weight_decay: float = 1e-4
    grad_clip: float = 5.0


@dataclass
class TeacherConfig:
    """Mean Teacher: EMA teacher, pseudo points and the unlabeled-loss weight ramp.

    The unlabeled weight is ``w = min(start_weight + (epoch − warmup_epochs)·ramp, max_weight)``
    from epoch ``warmup_epochs`` on (before it: labeled images only), and the step loss is
    ``(L_sup + w·L_semi) / (1 + w)``. Stage 3 (authors): ``w = min(0.1 + 0.01·e, 2)`` from its
    first epoch, i.e. ``warmup_epochs: 0``, ``start_weight: 0.1``.

    Attributes:
        momentum: EMA momentum of the teacher's parameters, updated every step.
        buffers: the teacher's BatchNorm statistics: ``"own"`` (its own, from its forward
            passes on the weak views: they match its averaged weights), ``"copy"`` (copied from
            the student each step) or ``"ema"`` (averaged); see :mod:`xmask.train.ema`.
        pseudo_logit: teacher cells with logit >= this become pseudo points.
        min_confidence: pseudo points with sigmoid(logit) <= this get loss weight 0 (P2R:
            0.7; the XMask authors: off, 0).
        warmup_epochs: labeled-only epochs before the unlabeled branch opens.
        follow_during_warmup: during the warm-up the teacher copies the student every step,
            so the branch opens with a teacher as good as the student (the authors average
            from a random start throughout, which leaves the teacher far behind on short
            schedules: 0.998^1000 ≈ 13 % of the random start after 1,000 steps). False: EMA
            throughout.
        ramp: growth of the unlabeled weight per epoch.
        start_weight: the unlabeled weight at epoch ``warmup_epochs``.
        max_weight: cap of the unlabeled weight.
    """

    momentum: float = 0.998
    buffers: str = "own"
    pseudo_logit: float = 0.0
    min_confidence: float = 0.0
    warmup_epochs: int = 50
    follow_during_warmup: bool = True
    ramp: float = 0.01
    start_weight: float = 0.0
    max_weight: float = 2.0


@dataclass
class ScheduleConfig:
    """How long training runs and how often it evaluates and checkpoints.

    Attributes:
        epochs: number of epochs.
        steps_per_epoch: optimiser steps per epoch; None: one pass over the unlabeled pool
            (the authors' epoch: ``ceil(pool / batch_unlabeled)``).
        batch_labeled: labeled crops per step (drawn with replacement).
        batch_unlabeled: unlabeled crops per step.
        eval_every: evaluate on the validation list every this many epochs (0: at the end).
        checkpoint_minutes: checkpoint at least this often (and at every epoch end).
        time_budget_minutes: stop once the training loop (steps and their data, summed over
            resumes) has run this long, whatever ``epochs`` says; None: no budget.
    """

    epochs: int = 1500
    steps_per_epoch: int | None = None
    batch_labeled: int = 16
    batch_unlabeled: int = 16
    eval_every: int = 10
    checkpoint_minutes: float = 10.0
    time_budget_minutes: float | None = None


@dataclass
class MaskStageConfig:
    """Stage 2 (XMask): the mask head trained with the discriminative loss (``docs/equations.md``).

    Attributes:
        init: the Stage-1 run (folder, ``checkpoints/``, ``best/`` or a ``.safetensors`` file)
            whose teacher weights start the Stage-2 student and teacher (required).
        masks: folder with ``masks/STEM.png`` label maps of the labeled images (the output of
            ``xmask annotate``); None annotates the labeled images with ``annotate_backend``
            into ``RUN/annotations`` first (resumable).
        annotate_backend: backend used when ``masks`` is None.
        trainable: modules that train: ``mask_head`` and optionally ``neck`` (the authors';
            the count head then sees a changing neck without a counting loss). The rest is
            frozen, in eval mode.
        centres: centres of the labeled images: ``"annotated"`` (the head points of the
            annotation, one per instance) or ``"predicted"`` (the authors': the student's
            points with logit > 0 that fall on an instance).
        kernel: ``k`` of the training smoothing (Eq. 2).
        sigma: ``σ`` of the training smoothing.
        loss: constants of Eq. 10.
        pseudo: Eq. 11–12 constants of the teacher's pseudo-masks.
        p_low: teacher points with ``p >= p_low`` are segmented (Fig. 5).
        p_high: teacher points with ``p > p_high`` are the valid centres (paper 0.95).
        ignore_radius: pixels within this of a mid-confidence teacher point
            (``p_low <= p <= p_high``) are left out of the unlabeled loss.
    """

    init: str | None = None
    masks: str | None = None
    annotate_backend: str = "superpixel"
    trainable: list[str] = field(default_factory=lambda: ["mask_head"])
    centres: str = "annotated"
    kernel: int = 7
    sigma: float = 1.5
    loss: DiscriminativeConfig = field(default_factory=DiscriminativeConfig)
    pseudo: SegmentConfig = field(default_factory=lambda: SegmentConfig(0.6, 0.8, sigma=1.5))
    p_low: float = 0.1
    p_high: float = 0.95
    ignore_radius: float = 16.0


@dataclass
class ConstraintStageConfig:
    """Stage 3: mask-constrained counting (paper Sec. 3.3, ``docs/equations.md``).

    The P2R loss stays on for labeled and unlabeled crops; the mask-constraint terms
    (:mod:`xmask.losses.mask_constraint`) are added with the annotation label maps on labeled
    crops (every instance valid) and the teacher's pseudo-masks on unlabeled ones (made as in
    Stage 2 with ``mask.pseudo``, ``mask.p_low`` and ``mask.p_high``, refreshed every step).

    Attributes:
        init: the Stage-2 run whose teacher starts the Stage-3 student and teacher (required).
        trainable: modules that train, a subset of ``backbone``, ``neck``, ``count_head`` (paper
            Tab. 3d: the decoder only, the default); the rest is frozen, in eval mode.
        gate: the authors' density gate: pseudo points with ``p <= gate`` take their whole
            NNEC circle as mask (their configs: 0.5); None: off (the paper).
        loss: weights and constants of Eq. 13–15.
    """

    init: str | None = None
    trainable: list[str] = field(default_factory=lambda: ["count_head"])
    gate: float | None = None
    loss: ConstraintConfig = field(default_factory=ConstraintConfig)


@dataclass
class OffsetStageConfig:
    """Stage 4: the offset head learns where each head lies around its cell
    (:mod:`xmask.models.offset_head`, :mod:`xmask.losses.offset`); every other part is frozen,
    so counts and masks stay exactly those of the run it starts from. Labeled crops only.

    Attributes:
        init: the run whose teacher starts Stage 4 (a Stage-3 run, or any earlier; required).
        beta: where the smooth-L1 loss turns linear, in pixels.
    """

    init: str | None = None
    beta: float = 1.0


@dataclass
class PipelineConfig:
    """``xmask train --pipeline``: the stages run one after the other in one run folder.

    Each stage's config is the pipeline recipe with that stage's layers (recipe names or files)
    merged over it, then the command's overrides. Stage 1 runs the recipe as it is.

    Attributes:
        stage2: layers of Stage 2 (e.g. ``[stage2-cpu]``), or None: no Stage 2.
        stage3: layers of Stage 3 (e.g. ``[stage3-cpu]``), or None: no Stage 3.
        stage4: layers of Stage 4 (the offset head, e.g. ``[stage4-cpu]``), or None: the
            pipeline ends with Stage 3.
        baseline: also continue Stage 1 alone for the wall time Stages 2 and 3 took
            (``stage1-more``): the equal-budget comparison.
        evaluate: the split every stage's final teacher is evaluated on at the end (e.g.
            ``test``), or None; reported, never used to select anything.
        test_masks: annotation folder of that split (``xmask annotate``) the mask-head stages
            are scored against; None: the pipeline annotates the split itself with
            ``mask.annotate_backend`` into ``ROOT/annotations-SPLIT``.
    """

    stage2: list[str] | None = field(default_factory=lambda: ["stage2-cpu"])
    stage3: list[str] | None = field(default_factory=lambda: ["stage3-cpu"])
    stage4: list[str] | None = None
    baseline: bool = False
    evaluate: str | None = None
    test_masks: str | None = None


@dataclass
class TrainConfig:
    """Everything a training run needs; the resolved copy is saved as ``RUN/config.yaml``.

    Attributes:
        name: run name; the run folder is ``out/name``.
        out: parent folder of run folders.
        seed: base seed of every random draw (data plans, augmentation, initialisation).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        threads: torch intra-op threads on the CPU (None: torch's default).
        calibrate: at the end of training, choose the count threshold of the final teacher
            (and of ``best/``) on the labeled images (:mod:`xmask.inference.calibration`).
        calibrate_student: also that of the final student (only ``xmask evaluate --which
            student`` reads it; each calibration is a pass over the labeled images).
        calibrate_two_regimes: let each calibration split the images into sparse and dense,
            with a threshold each, where that lowers the labeled MAE (for training sets of
            very different densities; :func:`~xmask.inference.calibration.choose_calibration`).
        stage: 1 (the P2R counter with Mean Teacher), 2 (the XMask mask head, ``mask``),
            3 (mask-constrained counting, ``constraint``) or 4 (the offset head, ``offset``).
        init: Stage 1 only, fine-tuning: a model (a registered name such as
            ``shanghaitech-lite0``, or a model folder) or a run whose counter (backbone, neck
            and count head) starts the student and teacher; its architecture replaces
            ``model``. None: ImageNet backbone, fresh neck and head.
    """

    name: str = "run"
    out: str = "runs"
    seed: int = 2024
    device: str = "auto"
    threads: int | None = None
    calibrate: bool = True
    calibrate_student: bool = False
    calibrate_two_regimes: bool = False
    stage: int = 1
    init: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    p2r: P2RConfig = field(default_factory=P2RConfig)
    mask: MaskStageConfig = field(default_factory=MaskStageConfig)
    constraint: ConstraintStageConfig = field(default_factory=ConstraintStageConfig)
    offset: OffsetStageConfig = field(default_factory=OffsetStageConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    @property
    def run_dir(self) -> Path:
        """``out/name``."""
        return Path(self.out) / self.name

    @property
    def counter_frozen(self) -> bool:
        """The counter stays exactly that of the run this one starts from (:attr:`start`):
        Stage 2 training none of ``backbone``, ``neck``, ``count_head``, and Stage 4."""
        counter = {"backbone", "neck", "count_head"}
        return self.stage == 4 or (self.stage == 2 and not counter & set(self.mask.trainable))

    @property
    def start(self) -> str | None:
        """The earlier run or model this stage starts from (``init`` for Stage 1,
        ``mask.init``, ``constraint.init``, ``offset.init``)."""
        section = {2: self.mask, 3: self.constraint, 4: self.offset}.get(self.stage)
        return self.init if section is None else section.init


def shipped_recipes() -> list[str]:
    """Names of the recipes in ``xmask/configs/`` (without ``.yaml``)."""
    folder = resources.files("xmask") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _recipe_path(spec: str | Path, relative_to: Path | None = None) -> Path:
    path = Path(spec).expanduser()
    if relative_to is not None and not path.is_absolute():
        candidate = relative_to / path
        if candidate.is_file():
            return candidate
    if path.is_file():
        return path
    name = str(spec).removesuffix(".yaml")
    if name in shipped_recipes():
        return Path(str(resources.files("xmask") / "configs" / f"{name}.yaml"))
    raise ConfigError(
        f"{spec}: no such recipe file or shipped recipe ({', '.join(shipped_recipes())})"
    )


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to this file")
    try:
        node = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: unreadable YAML ({err})") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys")
    base = node.pop("base", None)
    if base is None:
        return node
    bases = [base] if isinstance(base, str) else list(base)
    parents = [
        _load_yaml(_recipe_path(str(b), path.parent), (*seen, path.resolve())) for b in bases
    ]
    return OmegaConf.merge(*parents, node)  # type: ignore[return-value]


def load_config(
    spec: str | Path | Sequence[str | Path] | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Defaults ← recipe(s) (each with its ``base`` chain, merged in order) ← ``dotted.key=value``
    overrides.

    Raises:
        ConfigError: missing recipe, unknown key, or a value of the wrong type.
    """
    schema = OmegaConf.structured(TrainConfig)
    layers: list[Any] = [schema]
    specs = [] if spec is None else [spec] if isinstance(spec, str | Path) else list(spec)
    layers += [_load_yaml(_recipe_path(one)) for one in specs]
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        source = ", ".join(str(one) for one in specs) or "defaults"
        raise ConfigError(f"{source}: invalid configuration ({err})") from err


def config_from_yaml_text(text: str, source: str | Path) -> TrainConfig:
    """A config saved as YAML (``RUN/config.yaml``), checked against the schema."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(text))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        raise ConfigError(f"{source}: invalid configuration ({err})") from err


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
