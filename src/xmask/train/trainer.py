"""Training runs of Stage 1 (the P2R counter with Mean Teacher), Stage 2 (the XMask mask head)
and Stage 3 (mask-constrained counting), ``docs/equations.md``.

The trainer owns the data (labeled list, unlabeled pool, held-out validation list, and from
Stage 2 on the label maps of the labeled images), the epochs, the unlabeled-weight ramp and the
time budget, checkpoints and metrics; each step is the :class:`~xmask.train.stages.base.Stage`
that ``cfg.stage`` names (:data:`xmask.train.stages.STAGES`).

The run folder (``RUN = out/name``) gets the resolved config, a log, ``metrics.jsonl`` and
checkpoints (:mod:`xmask.inference.checkpoint`); ``resume=True`` continues from the latest one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed
from tqdm.auto import tqdm

from xmask.annotate.pipeline import annotate_dataset
from xmask.data.augment import Augmenter
from xmask.data.files import append_jsonl, atomic_write_bytes, read_jsonl, remove_stale_temporaries
from xmask.data.readers import CrowdDataset, open_dataset
from xmask.data.splits import ALL, read_labeled_list, semi_split
from xmask.device import DistInfo, resolve_device
from xmask.errors import DataError, XmaskError
from xmask.evaluation.evaluate import evaluate_model
from xmask.inference.calibration import (
    CountCalibration,
    calibrate_weights,
    read_calibration,
    write_calibration,
)
from xmask.inference.checkpoint import Checkpoint, latest_step, load_checkpoint, save_checkpoint
from xmask.inference.run_folder import RunFolder
from xmask.train.config import TrainConfig, to_yaml
from xmask.train.data import AugmentedDraws, CachedSamples, epoch_plan, mask_path, step_loader
from xmask.train.distributed import broadcast_flag, replicas_agree
from xmask.train.run_folder import load_trained_model
from xmask.train.stages import stage_class
from xmask.train.stages.base import Stage, optimizer_from_tensors, optimizer_tensors, run_step

log = logging.getLogger(__name__)


def unlabeled_weight(epoch: int, cfg: TrainConfig) -> float:
    """``w = min(start_weight + (epoch − warmup)·ramp, max_weight)`` from ``warmup`` on, 0
    before."""
    t = cfg.teacher
    if epoch < t.warmup_epochs:
        return 0.0
    return min(t.start_weight + (epoch - t.warmup_epochs) * t.ramp, t.max_weight)


@dataclass
class TrainState:
    """Counters saved with every checkpoint.

    Attributes:
        epoch: current epoch (0-based).
        step_in_epoch: steps already done in it.
        step: optimiser steps done in the whole run.
        best: best validation score so far, lower is better (None without validation): the
            count MAE, or for Stage 4 (which only places the points) 1 − F1 at 4 px.
        unmatched_points: points that owned no cell, summed over the run (P2R).
        seconds: time spent in the training loop (steps and their data) over the run, up to
            the last checkpoint; ``schedule.time_budget_minutes`` is measured on it.
        pseudo_mask_seconds: the part of ``seconds`` spent making pseudo-masks.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best: float | None = None
    unmatched_points: int = 0
    seconds: float = 0.0
    pseudo_mask_seconds: float = 0.0


def build_step(cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> Stage:
    """The step of ``cfg.stage`` (:data:`xmask.train.stages.STAGES`)."""
    return stage_class(cfg.stage)(cfg, device, dist_info)


class Trainer:
    """One training run of Stage 1, 2 or 3.

    Args:
        cfg: the resolved configuration.
        resume: continue from the run folder's latest checkpoint (it must exist).
        dist_info: this process's rank (``torchrun``) or the single-process default.
    """

    def __init__(
        self, cfg: TrainConfig, resume: bool = False, dist_info: DistInfo | None = None
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.run = RunFolder(cfg.run_dir)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.step = build_step(cfg, self.device, self.dist)
        self.student, self.teacher = self.step.student, self.step.teacher
        self.state = TrainState()
        self._build_data()
        if resume:
            remove_stale_temporaries(self.run.root)
            self._restore()

    def _build_data(self) -> None:
        cfg = self.cfg.data
        train = open_dataset(cfg.dataset, cfg.root, "train", max_short_side=cfg.max_short_side)
        names = train.names
        held_out = set(read_labeled_list(cfg.validation)) if cfg.validation else set()
        split = semi_split(names, cfg.labeled)
        labeled = split.labeled
        if str(cfg.labeled) == ALL:
            labeled = [i for i in labeled if names[i] not in held_out]
        elif held_out & {names[i] for i in labeled}:
            raise XmaskError(f"{cfg.validation}: validation images are also labeled images")
        needed = {names[i] for i in labeled} | held_out
        bare = [item.name for item in train.items if item.name in needed and not item.annotated]
        if bare:
            shown = ", ".join(bare[:5]) + (" ..." if len(bare) > 5 else "")
            raise DataError(
                cfg.root, f"{len(bare)} labeled or validation image(s) have no points: {shown}"
            )
        pool = {"all": range(len(names)), "rest": split.unlabeled, "none": []}
        if cfg.unlabeled_pool not in pool:
            raise XmaskError(f"data.unlabeled_pool must be all, rest or none: {cfg.unlabeled_pool}")
        unlabeled = [i for i in pool[cfg.unlabeled_pool] if names[i] not in held_out]
        self.labeled, self.unlabeled = labeled, unlabeled
        self.validation = train.subset([i for i, n in enumerate(names) if n in held_out])
        masks = self._label_maps(train, labeled) if self.step.needs_label_maps else None
        samples = CachedSamples(train, cfg.cache, masks)
        self.samples = samples
        augmenter = Augmenter(self.cfg.augment)
        self.labeled_set = AugmentedDraws(samples, augmenter, pairs=False)
        self.unlabeled_set = AugmentedDraws(samples, augmenter, pairs=True)
        sched = self.cfg.schedule
        self.steps_per_epoch = sched.steps_per_epoch or max(
            1, math.ceil(len(unlabeled or labeled) / (sched.batch_unlabeled * self.dist.world_size))
        )
        log.info(
            "%d labeled, %d unlabeled, %d held-out images; %d steps per epoch",
            len(labeled),
            len(unlabeled),
            len(held_out),
            self.steps_per_epoch,
        )

    def _label_maps(self, train: CrowdDataset, labeled: list[int]) -> Path:
        """The annotation folder of the labeled images: ``mask.masks``, or ``RUN/annotations``
        filled by ``mask.annotate_backend`` (rank 0, resumable)."""

        cfg = self.cfg.mask
        folder = Path(cfg.masks) if cfg.masks else self.run.root / "annotations"
        if cfg.masks is None and self.dist.is_main:
            log.info("annotating %d labeled images into %s", len(labeled), folder)
            annotate_dataset(train.subset(labeled), folder, cfg.annotate_backend)
        if self.dist.enabled:
            torch.distributed.barrier()
        missing = [
            train.names[i] for i in labeled if not mask_path(folder, train.names[i]).is_file()
        ]
        if missing:
            raise XmaskError(
                f"{folder}: no label map for {len(missing)} labeled image(s), e.g. {missing[:3]}"
            )
        return folder

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        tensors |= {f"teacher.{k}": v for k, v in self.teacher.model.state_dict().items()}
        tensors |= optimizer_tensors(self.step.optimizer)
        groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.step.optimizer.param_groups
        ]
        state = {**asdict(self.state), "optimizer": groups}
        save_checkpoint(self.run.checkpoints, Checkpoint(tensors=tensors, state=state))

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run.checkpoints)
        self.student.load_state_dict(ckpt.part("student"))
        self.teacher.model.load_state_dict(ckpt.part("teacher"))
        optimizer_from_tensors(self.step.optimizer, ckpt.part("optim"))
        fields = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: v for k, v in ckpt.state.items() if k in fields})
        self._drop_metrics_after(self.state.step)
        log.info(
            "resumed %s at epoch %d, step %d", self.run.root, self.state.epoch, self.state.step
        )

    def _drop_metrics_after(self, step: int) -> None:
        """Forget metric records written after the checkpoint we resume from (they will be
        written again), so ``metrics.jsonl`` never holds an epoch twice."""
        path = self.run.metrics_path
        if not self.dist.is_main or not path.is_file():
            return
        kept = [record for record in read_jsonl(path) if record.get("step", 0) <= step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write_bytes(path, text.encode("utf-8"), durable=True)

    def _append_metrics(self, record: dict) -> None:
        if self.dist.is_main:
            append_jsonl(self.run.metrics_path, record)

    # -- epochs ------------------------------------------------------------------------------

    def _batches(self) -> tuple[list, list | None]:
        sched = self.cfg.schedule
        plans = epoch_plan(
            self.cfg.seed,
            self.state.epoch,
            self.labeled,
            self.unlabeled,
            self.steps_per_epoch,
            sched.batch_labeled,
            sched.batch_unlabeled,
            self.dist.rank,
            self.dist.world_size,
        )[self.state.step_in_epoch :]
        labeled = [p.labeled for p in plans]
        semi = unlabeled_weight(self.state.epoch, self.cfg) > 0 and self.unlabeled
        return labeled, [p.unlabeled for p in plans] if semi else None

    def _epoch(self, last_save: float) -> float:
        labeled, unlabeled = self._batches()
        workers = self.cfg.data.workers
        lab_iter = iter(step_loader(self.labeled_set, labeled, workers))
        unl_iter = iter(step_loader(self.unlabeled_set, unlabeled, workers)) if unlabeled else None
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.state.step_in_epoch,
            desc=f"epoch {self.state.epoch + 1}/{self.cfg.schedule.epochs}",
            disable=not self.dist.is_main,
            leave=False,
        )
        totals: dict[str, float] = {"loss": 0.0, "sup": 0.0, "semi": 0.0, "pseudo_points": 0.0}
        totals["steps"] = 0
        started = tick = time.monotonic()
        for batch in lab_iter:
            torch.manual_seed(self.cfg.seed + self.state.step)
            weight = unlabeled_weight(self.state.epoch, self.cfg)
            stats = run_step(
                self.step,
                batch,
                next(unl_iter) if unl_iter is not None else None,
                weight,
                teacher_momentum=0.0 if self._teacher_follows() else None,
            )
            self.state.unmatched_points += stats.unmatched_points
            self.state.step += 1
            self.state.step_in_epoch += 1
            now = time.monotonic()
            self.state.seconds += now - tick
            self.state.pseudo_mask_seconds += stats.pseudo_mask_seconds
            tick = now
            totals["loss"] += stats.loss
            totals["sup"] += stats.sup
            totals["semi"] += stats.semi or 0.0
            totals["pseudo_points"] += stats.pseudo_points
            totals["pseudo_mask_seconds"] = (
                totals.get("pseudo_mask_seconds", 0.0) + stats.pseudo_mask_seconds
            )
            for key, value in stats.extras.items():
                totals[key] = totals.get(key, 0.0) + value
            totals["steps"] += 1
            images = totals["steps"] * self.cfg.schedule.batch_labeled
            bar.set_postfix(
                loss=f"{stats.loss:.4f}", img_s=f"{images / (time.monotonic() - started):.1f}"
            )
            bar.update()
            if broadcast_flag(self._budget_spent(), self.dist, self.device):
                break
            due = time.monotonic() - last_save > 60 * self.cfg.schedule.checkpoint_minutes
            if broadcast_flag(due, self.dist, self.device):
                self._checkpoint()
                last_save = time.monotonic()
        bar.close()
        self._end_epoch(totals, time.monotonic() - started)
        return time.monotonic()

    def _budget_spent(self) -> bool:
        """``schedule.time_budget_minutes`` of training-loop time has been used."""
        budget = self.cfg.schedule.time_budget_minutes
        return budget is not None and self.state.seconds >= 60 * budget

    def _teacher_follows(self) -> bool:
        """During the labeled-only warm-up the teacher copies the student (config)."""
        teacher = self.cfg.teacher
        return teacher.follow_during_warmup and self.state.epoch < teacher.warmup_epochs

    def _end_epoch(self, totals: dict, seconds: float) -> None:
        steps = max(int(totals["steps"]), 1)
        record = {
            "epoch": self.state.epoch + 1,
            "step": self.state.step,
            "loss": totals["loss"] / steps,
            "sup": totals["sup"] / steps,
            "semi": totals["semi"] / steps,
            "pseudo_points_per_step": totals["pseudo_points"] / steps,
            "unlabeled_weight": unlabeled_weight(self.state.epoch, self.cfg),
            "unmatched_points": self.state.unmatched_points,
            "seconds": seconds,
            "pseudo_mask_seconds": totals.get("pseudo_mask_seconds", 0.0),
        }
        logged = {"pseudo_points", "steps", *record}
        record |= {key: totals[key] / steps for key in sorted(totals) if key not in logged}
        log.info("epoch %d: %s", self.state.epoch + 1, json.dumps(record))
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        if self._validation_due():
            record |= self._validate()
        self._append_metrics(record)
        self._checkpoint()

    def _validation_due(self) -> bool:
        every = self.cfg.schedule.eval_every
        last = self.state.epoch == self.cfg.schedule.epochs or self._budget_spent()
        return len(self.validation) > 0 and (last or (every > 0 and self.state.epoch % every == 0))

    def _validate(self) -> dict:

        if not self.dist.is_main:
            return {}
        inherited = self._inherited_calibration()
        rule = inherited.rule if inherited is not None else 0.0
        model = self.teacher.model
        result = evaluate_model(model, self.validation, self.device, count_threshold=rule,
                                progress=False)  # fmt: skip
        mae, f1 = float(result.mae), result.localisation[4.0].f1
        log.info(
            "validation after epoch %d: MAE %.2f RMSE %.2f, F1 at 4 px %.3f",
            self.state.epoch,
            mae,
            result.rmse,
            f1,
        )
        score = 1.0 - f1 if self.cfg.stage == 4 else mae  # Stage 4 only places the points
        if self.state.best is None or score < self.state.best:
            self.state.best = score
            tensors = {f"teacher.{k}": v for k, v in model.state_dict().items()}
            save_checkpoint(self.run.best, Checkpoint(tensors, asdict(self.state)), keep=1)
        return {"val_mae": mae, "val_rmse": float(result.rmse), "val_f1_4": f1}

    def fit(self) -> TrainState:
        """Train until ``schedule.epochs``; returns the final counters."""
        if self.dist.is_main:
            atomic_write_bytes(self.run.config_path, to_yaml(self.cfg).encode("utf-8"))
        last_save = time.monotonic()
        while self.state.epoch < self.cfg.schedule.epochs and not self._budget_spent():
            last_save = self._epoch(last_save)
        log.info(
            "finished %d epochs (%d steps); %d points owned no cell over the run",
            self.state.epoch,
            self.state.step,
            self.state.unmatched_points,
        )
        self._check_replicas()
        if self.cfg.calibrate and self.dist.is_main:
            self._calibrate()
        return self.state

    def _calibrate(self) -> None:
        """Count thresholds of the final teacher (and student, if asked; and of ``best/``) on
        the labeled images; those already stored for these weights (a rerun after a kill) are
        kept."""

        samples = [self.samples[i] for i in self.labeled]
        if not samples:
            return
        calibrate = partial(
            calibrate_weights,
            samples=samples,
            device=self.device,
            two_regimes=self.cfg.calibrate_two_regimes,
        )
        step = self.state.step
        inherited = self._inherited_calibration()
        networks = [("teacher", self.teacher.model)]
        if self.cfg.calibrate_student:
            networks.append(("student", self.student))
        for which, model in networks:
            if read_calibration(self.run.checkpoints, which) is not None:
                continue
            if inherited is not None:
                write_calibration(self.run.checkpoints, replace(inherited, step=step, which=which))
                log.info(
                    "%s count threshold %s kept from %s (the counter did not train)",
                    which,
                    inherited.rule.describe(),
                    self.cfg.start,
                )
                continue
            calibrate(model, folder=self.run.checkpoints, step=step, which=which)
        if self.run.has_best() and read_calibration(self.run.best, "teacher") is None:
            best_step = latest_step(self.run.best)
            if inherited is not None:
                kept = replace(inherited, step=best_step, which="teacher")
                write_calibration(self.run.best, kept)
                return
            best, _ = load_trained_model(self.run.best, self.device)
            calibrate(best, folder=self.run.best, step=best_step, which="teacher")

    def _inherited_calibration(self) -> CountCalibration | None:
        """A stage that leaves the counter of the run it starts from exactly as it was (Stage 2
        with backbone, neck and count head frozen; Stage 4): that run's teacher threshold, if
        stored."""
        if not self.cfg.counter_frozen or not self.cfg.start:
            return None
        return read_calibration(self.cfg.start, "teacher")

    def _check_replicas(self) -> None:
        """In a distributed run, fail loudly if the ranks' student or teacher weights differ."""
        if not self.dist.enabled:
            return
        for name, module in (("student", self.student), ("teacher", self.teacher.model)):
            if not replicas_agree(module, self.dist, self.device):
                raise XmaskError(f"{name} weights differ between ranks after training")
        log.info("student and teacher weights identical on all %d ranks", self.dist.world_size)
