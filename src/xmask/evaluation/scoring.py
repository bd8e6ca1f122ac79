"""Segmentation quality of a model with a mask head against reference label maps.

The reference is an annotation folder (``DIR/masks/STEM.png``, e.g. ``xmask annotate`` with
the superpixel or EDP-SAM backend: the paper scores against EDP-SAM masks) or the exact masks
of synthetic crowds. Two scores, both with :mod:`xmask.metrics.segmentation` (Hungarian
one-to-one matching on IoU; the authors' mean IoU = Σ matched IoU / reference instances, and
precision / recall / F1 of matches with IoU ≥ 0.5):

``predicted``
    the instances of the heads the model predicts itself (the paper's setting: its count and
    its masks together);
``given``
    the instances the model makes for the reference's own head points (mask quality alone,
    independent of counting errors).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xmask.data.image_io import load_label_map
from xmask.data.readers import CrowdDataset
from xmask.errors import DataError
from xmask.inference.predictor import Predictor
from xmask.metrics.segmentation import SegmentationCounts, segmentation_counts

log = logging.getLogger(__name__)


@dataclass
class SegmentationScores:
    """Totals over a dataset.

    Attributes:
        predicted: counts for the model's own heads.
        given: counts for the reference's head points.
        images: images scored.
        seconds: wall time.
        skipped: ``{"name", "problem"}`` of the images that could not be scored.
    """

    predicted: SegmentationCounts = field(default_factory=SegmentationCounts)
    given: SegmentationCounts = field(default_factory=SegmentationCounts)
    images: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready totals."""
        return {
            "images": self.images,
            "predicted": self.predicted.to_dict(),
            "given": self.given.to_dict(),
            "seconds": self.seconds,
            "skipped": self.skipped,
        }


def score_segmentation(
    predictor: Predictor, dataset: CrowdDataset, masks: str | Path, progress: bool = True
) -> SegmentationScores:
    """Score ``predictor``'s masks on every image of ``dataset`` that ``masks`` annotates.

    Args:
        predictor: a predictor whose model has a mask head.
        dataset: the images and their head points (same order as the annotation's points).
        masks: annotation folder holding ``masks/STEM.png``.

    Returns:
        :class:`SegmentationScores`; images without a reference map or unreadable are skipped
        and listed.
    """
    folder = Path(masks)
    scores = SegmentationScores()
    start = time.perf_counter()
    for item in tqdm(dataset.items, desc="segmentation", disable=not progress):
        path = folder / "masks" / f"{Path(item.name).stem}.png"
        try:
            sample = dataset.load(item)
            reference = load_label_map(path, sample.size)
        except DataError as err:
            log.warning("skipped %s: %s", item.name, err)
            scores.skipped.append({"name": item.name, "problem": str(err)})
            continue
        own, given = predictor.predict_and_segment_points(sample.image, sample.points)
        assert own.labels is not None and given.labels is not None
        scores.predicted = scores.predicted + segmentation_counts(reference, own.labels)
        scores.given = scores.given + segmentation_counts(reference, given.labels)
        scores.images += 1
    scores.seconds = time.perf_counter() - start
    return scores
