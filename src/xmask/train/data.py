"""Training data: per-epoch draw plans and the datasets that turn draws into augmented views.

Each epoch has a plan fixed by ``(seed, epoch)`` alone: which labeled images (drawn with
replacement) and which unlabeled images (a permutation of the pool) every step uses, and the
augmentation seed of every draw. Resuming mid-epoch replays the same plan and skips the steps
already done; ranks of a distributed run take disjoint shares of every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xmask.data.augment import Augmenter, View, collate_pairs, collate_views
from xmask.data.image_io import load_label_map
from xmask.data.readers import CrowdDataset, open_dataset
from xmask.data.splits import semi_split
from xmask.errors import DataError
from xmask.train.config import TrainConfig
from xmask.types import Sample


@dataclass(frozen=True)
class Draw:
    """One image drawn for one step: dataset ``index`` and the ``seed`` of its augmentation."""

    index: int
    seed: int


@dataclass(frozen=True)
class StepPlan:
    """The draws of one optimiser step on one rank."""

    labeled: list[Draw]
    unlabeled: list[Draw]


def _draws(rng: np.random.Generator, indices: np.ndarray) -> list[Draw]:
    seeds = rng.integers(0, 2**62, size=len(indices))
    return [Draw(int(i), int(s)) for i, s in zip(indices, seeds, strict=True)]


def _cover(rng: np.random.Generator, pool: Sequence[int], count: int) -> np.ndarray:
    """``count`` items: whole permutations of ``pool`` back to back."""
    if count == 0 or not pool:
        return np.zeros(0, dtype=np.int64)
    rounds = math.ceil(count / len(pool))
    return np.concatenate([rng.permutation(np.asarray(pool)) for _ in range(rounds)])[:count]


def epoch_plan(
    seed: int,
    epoch: int,
    labeled: Sequence[int],
    unlabeled: Sequence[int],
    steps: int,
    batch_labeled: int,
    batch_unlabeled: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[StepPlan]:
    """The draws of every step of ``epoch`` for ``rank``.

    Each step draws ``batch_labeled·world_size`` labeled images with replacement and
    ``batch_unlabeled·world_size`` unlabeled images (the pool in random order, repeated when
    the epoch is longer than one pass); rank ``r`` takes slice ``r`` of each step's draws.
    """
    rng = np.random.default_rng([seed, epoch])
    per_l, per_u = batch_labeled * world_size, batch_unlabeled * world_size
    lab_idx = rng.choice(np.asarray(labeled), size=steps * per_l) if labeled else []
    lab = _draws(rng, np.asarray(lab_idx, dtype=np.int64))
    unl = _draws(rng, _cover(rng, unlabeled, steps * per_u))
    plans = []
    for step in range(steps):
        lab_step = lab[step * per_l : (step + 1) * per_l]
        unl_step = unl[step * per_u : (step + 1) * per_u]
        plans.append(
            StepPlan(
                labeled=lab_step[rank * batch_labeled : (rank + 1) * batch_labeled],
                unlabeled=unl_step[rank * batch_unlabeled : (rank + 1) * batch_unlabeled],
            )
        )
    return plans


class CachedSamples:
    """Samples of a dataset, decoded once and kept in memory when ``cache`` is set. An image
    without ground truth (an unlabeled image of the folder format) has no points; the trainer
    has checked that every labeled image has them.

    Args:
        dataset: the training images.
        cache: keep decoded samples.
        masks: an annotation folder (``masks/STEM.png``, the output of ``xmask annotate``):
            samples without a label map get the one found there.
    """

    def __init__(
        self, dataset: CrowdDataset, cache: bool = True, masks: Path | None = None
    ) -> None:
        self.dataset = dataset
        self.cache = cache
        self.masks = masks
        self._store: dict[int, Sample] = {}

    def __getitem__(self, index: int) -> Sample:
        if index in self._store:
            return self._store[index]
        sample = self.dataset.load(self.dataset.items[index], points_optional=True)
        if self.masks is not None and sample.labels is None:
            sample = with_label_map(sample, self.masks)
        if self.cache:
            self._store[index] = sample
        return sample


def mask_path(folder: Path, name: str) -> Path:
    """Where an annotation folder keeps the label map of image ``name``."""
    return folder / "masks" / f"{Path(name).stem}.png"


def with_label_map(sample: Sample, folder: Path) -> Sample:
    """``sample`` with its label map from ``folder`` when there is one.

    Raises:
        DataError: unreadable map, wrong size, or labels beyond the sample's points.
    """
    path = mask_path(folder, sample.name)
    if not path.is_file():
        return sample
    labels = load_label_map(path, sample.size)
    if labels.max(initial=0) > sample.count:
        raise DataError(path, f"label {labels.max()} but the image has {sample.count} points")
    return replace(sample, labels=labels)


class AugmentedDraws(Dataset):
    """Map-style dataset keyed by :class:`Draw`: weak views (labeled) or weak/strong pairs.

    Args:
        samples: the training images.
        augmenter: the joint augmentation.
        pairs: return ``(weak, strong)`` (unlabeled branch) instead of a weak view; pairs
            never carry label maps (the unlabeled branch must not see them, and a pool mixing
            images with and without maps could not be batched).
    """

    def __init__(self, samples: CachedSamples, augmenter: Augmenter, pairs: bool) -> None:
        self.samples = samples
        self.augmenter = augmenter
        self.pairs = pairs

    def __getitem__(self, draw: Draw) -> View | tuple[View, View]:  # type: ignore[override]
        generator = torch.Generator().manual_seed(draw.seed)
        sample = self.samples[draw.index]
        if self.pairs:
            return self.augmenter(replace(sample, labels=None), generator)
        return self.augmenter.labeled(sample, generator)


def step_loader(dataset: AugmentedDraws, batches: list[list[Draw]], workers: int) -> DataLoader:
    """A loader yielding one collated batch per entry of ``batches``, in order."""
    return DataLoader(
        dataset,
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate_pairs if dataset.pairs else collate_views,
    )


def labeled_training_images(cfg: TrainConfig) -> CrowdDataset:
    """The labeled training images of a run's config (its dataset, root, split list and
    resize rule): the images a threshold may be calibrated on."""
    data = cfg.data
    train = open_dataset(data.dataset, data.root, "train", max_short_side=data.max_short_side)
    return train.subset(semi_split(train.names, data.labeled).labeled)


def validation_images(cfg: TrainConfig) -> CrowdDataset:
    """The held-out validation images of a run's config (``data.validation``): images it never
    trained on, where a threshold or a scale rule may be chosen.

    Raises:
        DataError: the run has no validation list.
    """
    data = cfg.data
    if data.validation is None:
        raise DataError(data.root, "the run holds no images out (data.validation is not set)")
    train = open_dataset(data.dataset, data.root, "train", max_short_side=data.max_short_side)
    return train.subset(semi_split(train.names, data.validation).labeled)
