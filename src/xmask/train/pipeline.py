"""``xmask train --pipeline``: Stage 1 → annotation of the labeled images → Stage 2 → Stage 3
(→ the equal-budget Stage-1 baseline → evaluation) in one run folder, resumable at any point.

Layout of ``ROOT = out/name``::

    pipeline-command.json  the recipes and overrides that started it (a rerun must repeat them)
    pipeline.yaml        the pipeline recipe as resolved by the latest call
    pipeline.log         the log of every call (each stage also logs to its train.log)
    pipeline.json        per part: wall and training-loop seconds, pseudo-mask seconds, and the
                         evaluation results; the overhead share (written after every part)
    stage1/ stage2/ stage3/ stage1-more/   run folders (config.yaml, checkpoints/, metrics.jsonl,
                         train.log, eval-SPLIT.json); each is a ``--checkpoint`` for
                         ``xmask evaluate``
    annotations/         label maps of the labeled images (``xmask annotate`` layout)
    annotations-SPLIT/   label maps of the evaluated split, the reference of the mask scores
                         (unless ``pipeline.test_masks`` names one)

Stage ``k``'s config is ``pipeline.yaml`` with the layers ``pipeline.stage<k>`` merged over
it, then the command's overrides (``stage2.schedule.epochs=5`` applies to Stage 2 only), then
the links between the stages (``mask.init``, ``constraint.init``, ``mask.masks``).

Every part writes its result before it is marked done in ``pipeline.json`` (written
atomically) and a done part is never run again; a part cut short resumes from its own latest
checkpoint. So a SIGKILL at any point, then the same command, finishes the work and recomputes
nothing already written.

Cost accounting: a training part costs its training-loop seconds summed over resumes (from its
checkpoints, so work lost to a kill is not counted twice) plus the rest of the wall time of the
call that finished it (loading, calibration). ``pipeline.baseline`` continues Stage 1 alone
(``stage1-more``, a copy of ``stage1``) for the training-loop time that annotation, Stage 2
and Stage 3 cost together: the equal-budget comparison. The overhead is the time outside
training steps (annotation, pseudo-masks, loading and calibration, evaluation) over the
pipeline's total.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from xmask.annotate.pipeline import annotate_dataset
from xmask.data.files import atomic_write_bytes, read_jsonl
from xmask.data.readers import CrowdDataset, open_dataset
from xmask.data.splits import semi_split
from xmask.device import resolve_device
from xmask.evaluation.evaluate import evaluate_model
from xmask.evaluation.scoring import score_segmentation
from xmask.inference.calibration import resolve_count_rule
from xmask.inference.checkpoint import checkpoint_state
from xmask.inference.predictor import Predictor
from xmask.inference.run_folder import RunFolder
from xmask.train.config import ConfigError, TrainConfig, load_config, to_yaml
from xmask.train.run_folder import load_trained_model
from xmask.train.stages import STAGES, stage_class
from xmask.train.stages.base import Stage

log = logging.getLogger(__name__)

STAGE_FOLDERS = tuple(f"stage{stage.number}" for stage in STAGES)
"""The run folders of the training stages, in order (``stage1-more`` is the optional
baseline)."""

MACHINE_KEYS = ("threads", "device")
"""Overrides that say where a pipeline runs, not what it trains: free to change on a rerun."""

UNTIL_BUDGET = 1_000_000
"""``schedule.epochs`` of the baseline: its time budget, never this, ends it."""


@dataclass
class PartCost:
    """What one finished part cost.

    Attributes:
        wall: seconds of the call that finished it.
        loop: training-loop seconds over every call (0 for annotation and evaluation).
        pseudo_masks: the part of ``loop`` spent making pseudo-masks.
        total: the part's cost: ``loop`` plus the finishing call's time outside the loop.
    """

    wall: float
    loop: float = 0.0
    pseudo_masks: float = 0.0
    total: float = 0.0


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Common overrides, and per-stage ones (``stage2.KEY=VALUE`` → Stage 2's ``KEY=VALUE``)."""
    common: list[str] = []
    per_stage: dict[str, list[str]] = {name: [] for name in STAGE_FOLDERS}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in per_stage and rest:
            per_stage[head].append(rest)
        else:
            common.append(item)
    return common, per_stage


class Pipeline:
    """The stages of one recipe in one folder (module docstring).

    Args:
        specs: the pipeline recipe(s) (files or shipped names, merged in order).
        overrides: dotted overrides (``KEY=VALUE`` for every stage, ``stageN.KEY=VALUE``).
        train: runs one training config, resuming from its checkpoint when asked, and returns
            the training-loop seconds this call spent (the CLI's runner: threads, log file).
    """

    def __init__(
        self,
        specs: list[str],
        overrides: list[str],
        train: Callable[[TrainConfig, bool], float],
    ) -> None:
        self.specs, self.overrides = [str(spec) for spec in specs], list(overrides)
        self.common, self.per_stage = split_overrides(overrides)
        self.cfg = load_config(specs, self.common)
        self.root = self.cfg.run_dir
        self.train = train
        self.summary: dict[str, Any] = {"parts": {}}

    @property
    def recipe_path(self) -> Path:
        """``ROOT/pipeline.yaml``."""
        return self.root / "pipeline.yaml"

    @property
    def summary_path(self) -> Path:
        """``ROOT/pipeline.json``."""
        return self.root / "pipeline.json"

    @property
    def command_path(self) -> Path:
        """``ROOT/pipeline-command.json``: the recipes and overrides that started it."""
        return self.root / "pipeline-command.json"

    def _pin_command(self) -> None:
        """Record the recipes and overrides once and refuse a rerun with others (the machine's
        ``threads`` and ``device`` may change between calls); write the resolved recipe as this
        call sees it (``pipeline.yaml``)."""
        command = {"recipes": self.specs, "overrides": self.overrides}
        if self.command_path.is_file():
            pinned = json.loads(self.command_path.read_text(encoding="utf-8"))
            if _training_part(pinned) != _training_part(command):
                raise ConfigError(
                    f"{self.command_path}: this folder holds a pipeline started with other "
                    "recipes or overrides (threads and device may differ); rerun the same "
                    "command, or set name=... for a new one"
                )
            log.info("continuing the pipeline in %s", self.root)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            text = json.dumps(command, indent=2) + "\n"
            atomic_write_bytes(self.command_path, text.encode("utf-8"))
        atomic_write_bytes(self.recipe_path, to_yaml(self.cfg).encode("utf-8"))
        if self.summary_path.is_file():
            self.summary = json.loads(self.summary_path.read_text(encoding="utf-8"))

    def stage_config(self, stage: str) -> TrainConfig:
        """The config of the stage whose run folder is ``stage`` (``stage2``; module
        docstring): the pipeline recipe, ``pipeline.stageN`` layers, the overrides, and the link
        to the previous stage's run (the stage's ``init_key``)."""
        number = STAGE_FOLDERS.index(stage) + 1
        kind = stage_class(number)
        layers = list(self._layers(number) or [])
        earlier = [s.number for s in self._stages() if s.number < number]
        links = []
        if kind.init_key is not None and earlier:
            links = [f"{kind.init_key}={self.root / f'stage{earlier[-1]}'}"]
        overrides = [*self.common, *self.per_stage[stage], *links]
        overrides += [f"name={stage}", f"out={self.root}", f"mask.masks={self.annotations}"]
        cfg = load_config([self.recipe_path, *layers], overrides)
        if cfg.stage != number:
            raise ConfigError(f"{stage}: its layers set stage={cfg.stage}, expected {number}")
        return cfg

    @property
    def annotations(self) -> Path:
        """``ROOT/annotations``."""
        return self.root / "annotations"

    def run(self) -> dict[str, Any]:
        """Run every part not yet done; returns the summary (also in ``pipeline.json``)."""
        self._pin_command()
        started = time.monotonic()
        first_with_maps = next(s.number for s in STAGES if s.needs_label_maps)
        for stage in self._stages():
            folder = f"stage{stage.number}"
            if stage.number == first_with_maps:
                self._part("annotations", self._annotate)
            self._part(folder, partial(self._train_stage, folder))
        if self.cfg.pipeline.baseline:
            self._part("stage1-more", lambda: self._train_part(self._baseline_config()))
        if self.cfg.pipeline.evaluate:
            if self.cfg.pipeline.test_masks is None:
                self._part(f"annotations-{self.cfg.pipeline.evaluate}", self._annotate_evaluated)
            for name in self._trained():
                self._part(f"evaluate-{name}", partial(self._evaluate, name))
        self.summary |= self._overhead()
        self._write_summary()
        log.info("pipeline %s done in %.0f s (this call)", self.root, time.monotonic() - started)
        return self.summary

    def _stages(self) -> list[type[Stage]]:
        """The stages this pipeline trains: Stage 1, and each later one whose layers
        (``pipeline.stageN``) are not None."""
        return [s for s in STAGES if s.number == 1 or self._layers(s.number) is not None]

    def _layers(self, number: int) -> list[str] | None:
        return getattr(self.cfg.pipeline, f"stage{number}", None)

    def _trained(self) -> list[str]:
        folders = [f"stage{s.number}" for s in self._stages()]
        return [*folders, *(["stage1-more"] if self.cfg.pipeline.baseline else [])]

    def _part(self, name: str, work: Callable[[], PartCost | dict[str, Any]]) -> None:
        """Run ``work`` unless ``name`` is done; record its result and mark it done."""
        parts = self.summary["parts"]
        if name in parts:
            log.info("%s: done already", name)
            return
        log.info("%s: running", name)
        result = work()
        parts[name] = result if isinstance(result, dict) else vars(result)
        self._write_summary()

    def _write_summary(self) -> None:
        text = json.dumps(self.summary, indent=2) + "\n"
        atomic_write_bytes(self.summary_path, text.encode("utf-8"))

    def _train_stage(self, stage: str) -> PartCost:
        return self._train_part(self.stage_config(stage))

    def _train_part(self, cfg: TrainConfig) -> PartCost:
        run = RunFolder(cfg.run_dir)
        started = time.monotonic()
        loop_now = self.train(cfg, run.has_checkpoint())
        wall = time.monotonic() - started
        state = checkpoint_state(run.checkpoints)
        loop = loop_seconds(run, state)
        if cfg.run_dir.name == "stage1-more":
            loop -= self._stage1_checkpoint_seconds()
        return PartCost(
            wall=wall,
            loop=loop,
            pseudo_masks=float(state.get("pseudo_mask_seconds", 0.0)),
            total=loop + max(wall - loop_now, 0.0),
        )

    def _stage1_checkpoint_seconds(self) -> float:
        """The training-loop seconds Stage 1's final checkpoint carries (0 for a Stage-1 run
        made before xmask counted them): where ``stage1-more`` starts its clock."""
        state = checkpoint_state(self.root / "stage1" / "checkpoints")
        return float(state.get("seconds", 0.0))

    def _annotate(self) -> PartCost:
        """The labeled training images, into ``annotations/``."""

        train = self._dataset("train")
        labeled = semi_split(train.names, self.cfg.data.labeled).labeled
        return self._annotate_into(train.subset(labeled), self.annotations)

    def _annotate_evaluated(self) -> dict[str, Any]:
        """The evaluated split, into ``annotations-SPLIT/`` (the reference masks of the
        evaluation when ``pipeline.test_masks`` is None); evaluation time, not training."""
        split = str(self.cfg.pipeline.evaluate)
        cost = self._annotate_into(self._dataset(split), self.root / f"annotations-{split}")
        return {"wall": cost.wall}

    def _dataset(self, split: str) -> CrowdDataset:

        data = self.cfg.data
        return open_dataset(data.dataset, data.root, split, max_short_side=data.max_short_side)

    def _annotate_into(self, dataset: CrowdDataset, folder: Path) -> PartCost:

        started = time.monotonic()
        annotate_dataset(dataset, folder, self.cfg.mask.annotate_backend)
        wall = time.monotonic() - started
        return PartCost(wall=wall, total=wall)

    def _baseline_config(self) -> TrainConfig:
        """``stage1-more``: a copy of ``stage1`` resumed for the training-loop time that
        annotation, Stage 2 and Stage 3 cost."""
        source, target = self.root / "stage1", self.root / "stage1-more"
        if not target.is_dir():
            partial = self.root / ".stage1-more.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial, ignore=shutil.ignore_patterns("eval-*"))
            partial.rename(target)
        parts = self.summary["parts"]
        later = [f"stage{s.number}" for s in self._stages()[1:]]
        extra = sum(parts[name]["total"] for name in ("annotations", *later))
        budget = (self._stage1_checkpoint_seconds() + extra) / 60.0
        overrides = [
            *self.common,
            *self.per_stage["stage1"],
            f"schedule.epochs={UNTIL_BUDGET}",
            f"schedule.time_budget_minutes={budget}",
            "name=stage1-more",
            f"out={self.root}",
        ]
        return load_config([target / "config.yaml"], overrides)

    def _evaluate(self, name: str) -> dict[str, Any]:
        """``evaluate_run`` of one trained part into ``NAME/eval-SPLIT.json``. A Stage 2 whose
        counter stayed frozen has Stage 1's counter: its counting results are Stage 1's
        (``counting_from``), and only its masks are scored."""
        pipe = self.cfg.pipeline
        masks: str | None = pipe.test_masks or str(self.root / f"annotations-{pipe.evaluate}")
        if name in ("stage1", "stage1-more"):
            masks = None
        reuse = name == "stage2" and self.stage_config("stage2").counter_frozen
        started = time.monotonic()
        result = evaluate_run(
            self.root / name, str(pipe.evaluate), self.cfg.device, masks, not reuse
        )
        if reuse:
            counting = self.summary["parts"]["evaluate-stage1"]
            kept = {k: v for k, v in counting.items() if k not in ("wall", "seconds")}
            result = kept | result | {"counting_from": "stage1"}
        result["wall"] = time.monotonic() - started
        atomic_write_bytes(
            self.root / name / f"eval-{pipe.evaluate}.json",
            (json.dumps(result, indent=2) + "\n").encode("utf-8"),
        )
        return result

    def _overhead(self) -> dict[str, float]:
        """Seconds in training steps and outside them, over every part."""
        parts = self.summary["parts"]
        total = steps = 0.0
        for name, part in parts.items():
            if name.startswith(("evaluate-", "annotations-")):
                total += part["wall"]
            else:
                total += part["total"]
                steps += part["loop"] - part["pseudo_masks"]
        return {
            "seconds_total": total,
            "seconds_in_training_steps": steps,
            "overhead_share": (total - steps) / total if total > 0 else 0.0,
        }


def loop_seconds(run: RunFolder, state: dict[str, Any]) -> float:
    """A run's training-loop seconds: from its latest checkpoint's ``state``, or for a run made
    before xmask counted them, the sum of the epoch times in ``metrics.jsonl``."""
    if "seconds" in state:
        return float(state["seconds"])
    return sum(float(record.get("seconds", 0.0)) for record in read_jsonl(run.metrics_path))


def evaluate_run(
    run: Path,
    split: str,
    device: str = "auto",
    masks: str | None = None,
    counting: bool = True,
) -> dict[str, Any]:
    """The final teacher of a run folder on ``split`` of its dataset, with its calibrated count
    threshold: counting and localisation
    (:meth:`xmask.evaluation.evaluate.EvaluationResult.to_dict`; unless ``counting`` is False), and
    with ``masks`` (an annotation folder) and a mask head, ``segmentation``
    (:func:`xmask.evaluation.scoring.score_segmentation`)."""

    where = resolve_device(device)
    model, cfg = load_trained_model(run, where)
    threshold = resolve_count_rule("auto", run, "teacher")
    data = cfg.data
    dataset = open_dataset(data.dataset, data.root, split, max_short_side=data.max_short_side)
    result: dict[str, Any] = {}
    if counting:
        result = evaluate_model(model, dataset, where, count_threshold=threshold).to_dict()
    if masks is not None and cfg.model.mask_head:
        predictor = Predictor(model, where, threshold)
        result["segmentation"] = score_segmentation(predictor, dataset, masks).to_dict()
    return result


def _training_part(command: dict[str, Any]) -> dict[str, Any]:
    """A pinned command without its :data:`MACHINE_KEYS` overrides."""
    overrides = [o for o in command["overrides"] if o.split("=", 1)[0].strip() not in MACHINE_KEYS]
    return {**command, "overrides": overrides}
