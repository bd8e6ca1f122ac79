"""One evaluation as ``xmask evaluate`` asks for it: which model, which images, what to score and
where the figures go. The CLI only turns its options into an :class:`EvaluationRequest` and
prints the :class:`EvaluationReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmask.data.locations import dataset_root
from xmask.data.readers import CrowdDataset, dataset_key, open_dataset
from xmask.data.splits import semi_split
from xmask.device import resolve_device
from xmask.errors import XmaskError
from xmask.evaluation.evaluate import EvaluationResult, evaluate_model, format_result
from xmask.evaluation.scoring import SegmentationScores, score_segmentation
from xmask.inference.loading import InferenceModel, load_inference_model
from xmask.inference.model_folder import output_folder, record_metrics
from xmask.inference.predictor import Predictor
from xmask.inference.run_folder import find_run_folder
from xmask.inference.scale import resolve_scale
from xmask.inference.tiling import MAX_PIXELS, OVERLAP, TILE, check_tiling
from xmask.metrics.localisation import DEFAULT_THRESHOLDS

log = logging.getLogger(__name__)


@dataclass
class EvaluationRequest:
    """What to evaluate, on what, and how (the options of ``xmask evaluate``).

    Attributes:
        model: a model name or folder, or a training run (None: the shipped model).
        which: the network of a run, ``"teacher"`` or ``"student"``.
        threshold: ``"auto"`` or a logit (:func:`~xmask.inference.calibration.resolve_count_rule`).
        scale: ``"auto"`` (the model's rule), ``"off"``, ``"shrink"`` or ``"adaptive"``
            (:func:`~xmask.inference.scale.resolve_scale`).
        locate: points from a locating pass this many times larger (0: none; None: the
            rule's own).
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"``.
        backend: what runs the network: ``"torch"`` (the figures a model card records),
            ``"onnx"``, ``"onnx-int8"`` or ``"auto"`` (as ``xmask predict`` runs it:
            :func:`~xmask.inference.onnx_backend.auto_backend`).
        dataset: reader key; None: the run's training dataset.
        root: dataset folder; None: the run's when it is on this machine, else the configured
            one (:func:`xmask.data.locations.dataset_root`).
        split: ``train``, ``test`` (jhu: also ``val``).
        max_short_side: resize rule; None: the run's when evaluating the run's dataset.
        labeled: only the labeled images of this split list.
        unlabeled: only the unlabeled pool of this split list.
        masks: an annotation folder to score the instance masks against, or None.
        csv: the per-image CSV; None: :func:`default_csv`.
        record: store the figures in the model folder's card (an installed model's user copy,
            :func:`~xmask.inference.model_folder.record_metrics`).
        thresholds: localisation distance thresholds in pixels.
        max_pixels: images with more pixels run in tiles.
        tile: tile side in pixels.
        overlap: least overlap of neighbouring tiles in pixels.
    """

    model: str | None = None
    which: str = "teacher"
    threshold: str = "auto"
    scale: str = "auto"
    locate: float | None = None
    device: str = "auto"
    backend: str = "torch"
    dataset: str | None = None
    root: str | None = None
    split: str = "test"
    max_short_side: int | None = None
    labeled: str | None = None
    unlabeled: str | None = None
    masks: str | None = None
    csv: str | None = None
    record: bool = False
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    max_pixels: int = MAX_PIXELS
    tile: int = TILE
    overlap: int = OVERLAP

    def check(self) -> None:
        """Raise :class:`~xmask.errors.XmaskError` for bad tiling or non-positive values."""
        try:
            check_tiling(self.tile, self.overlap)
        except ValueError as err:
            raise XmaskError(f"--tile/--overlap: {err}") from err
        if self.max_pixels < 1 or min(self.thresholds) <= 0:
            raise XmaskError("--max-pixels and --sigma must be positive")
        if self.record and self.backend != "torch":
            raise XmaskError("--record stores the torch network's figures: drop --backend")


@dataclass
class EvaluationReport:
    """The result of one request.

    Attributes:
        source: the model folder or run evaluated.
        which: its network.
        backend: what ran it (``"torch"``, ``"onnx"``, ``"onnx-int8"``).
        dataset: the reader key used.
        root: the dataset folder.
        split: the split.
        max_short_side: the resize rule applied.
        csv: where the per-image rows were written.
        result: counting and localisation.
        segmentation: mask scores, with ``masks``.
    """

    source: Path
    which: str
    backend: str
    dataset: str
    root: str
    split: str
    max_short_side: int | None
    csv: Path
    result: EvaluationResult
    segmentation: SegmentationScores | None = None

    @property
    def skipped(self) -> bool:
        """Some image or reference could not be read."""
        masks = self.segmentation is not None and bool(self.segmentation.skipped)
        return bool(self.result.skipped) or masks

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``xmask evaluate --json``."""
        header = {
            "model": str(self.source),
            "which": self.which,
            "backend": self.backend,
            "dataset": self.dataset,
            "root": self.root,
            "split": self.split,
            "max_short_side": self.max_short_side,
            "csv": str(self.csv),
        }
        extra = {} if self.segmentation is None else {"segmentation": self.segmentation.to_dict()}
        return header | self.result.to_dict() | extra

    def text(self) -> str:
        """The human-readable report."""
        lines = [
            f"{self.source} ({self.which}, {self.backend}) on {self.dataset} {self.split} "
            f"({self.root})"
        ]
        lines.append(format_result(self.result))
        if self.segmentation is not None:
            for name in ("predicted", "given"):
                counts = getattr(self.segmentation, name)
                lines.append(
                    f"masks ({name} heads): mean IoU {counts.mean_iou:.3f}, P/R/F1@0.5 "
                    f"{counts.precision:.3f}/{counts.recall:.3f}/{counts.f1:.3f}"
                )
        lines.append(f"per-image results: {self.csv}")
        return "\n".join(lines)


@dataclass(frozen=True)
class EvaluationImages:
    """The images of a request: the reader key and folder they came from, and the dataset."""

    name: str
    root: str
    images: CrowdDataset


def evaluation_images(request: EvaluationRequest, loaded: InferenceModel) -> EvaluationImages:
    """The images a request names, with the run's data as default.

    Raises:
        XmaskError: no dataset or root known, or no image in the split.
    """
    trained = loaded.dataset or (None, None, None)
    name = request.dataset or trained[0]
    if name is None:
        raise XmaskError(f"{loaded.source}: the model does not say its data; give --dataset")
    own = dataset_key(name) == dataset_key(trained[0]) if trained[0] else False
    root = dataset_root(dataset_key(name), request.root, trained[1] if own else None)
    max_short_side = request.max_short_side
    if max_short_side is None and own:
        max_short_side = trained[2]
    dataset = open_dataset(name, root, request.split, max_short_side=max_short_side)
    if request.labeled or request.unlabeled:
        part = semi_split(dataset.names, request.labeled or request.unlabeled)
        dataset = dataset.subset(part.labeled if request.labeled else part.unlabeled)
    if len(dataset) == 0:
        raise XmaskError(f"{root}: no images in the {request.split} split of {name}")
    return EvaluationImages(name, str(root), dataset)


def default_csv(loaded: InferenceModel, dataset: str, split: str) -> Path:
    """``RUN/eval-DATASET-SPLIT.csv`` for a run; ``MODEL/eval-DATASET-SPLIT.csv`` for a model
    folder of the user's, ``$XMASK_MODELS/NAME/eval-DATASET-SPLIT.csv`` for an installed one
    (:func:`~xmask.inference.model_folder.output_folder`). Never the current folder."""
    if loaded.card is None:
        return find_run_folder(loaded.source).root / f"eval-{dataset}-{split}.csv"
    return output_folder(loaded.source) / f"eval-{dataset}-{split}.csv"


def run_evaluation(request: EvaluationRequest) -> EvaluationReport:
    """Evaluate (module docstring): counting and localisation, optionally the masks; write the
    CSV; with ``record``, store the figures in the model folder's card.

    Raises:
        XmaskError: bad options, nothing loadable, no images, or ``record`` for a run.
    """
    request.check()
    device = resolve_device(request.device)
    loaded = load_inference_model(request.model, device, request.which, request.threshold)
    if request.record and loaded.card is None:
        raise XmaskError(f"{loaded.source}: --record needs a model folder, not a run")
    chosen = evaluation_images(request, loaded)
    tiling = {"max_pixels": request.max_pixels, "tile": request.tile, "overlap": request.overlap}
    rule = resolve_scale(request.scale, loaded.scale, request.locate)
    predictor = Predictor.load(loaded, device, scale=rule, backend=request.backend, **tiling)
    result = evaluate_model(
        loaded.model,
        chosen.images,
        device,
        thresholds=request.thresholds,
        count_threshold=loaded.count_rule,
        scale=rule,
        network=predictor.network,
        **tiling,
    )
    csv = Path(request.csv) if request.csv else default_csv(loaded, chosen.name, request.split)
    result.write_csv(csv)
    log.info("wrote per-image results to %s", csv)
    segmentation = None
    if request.masks:
        if not predictor.has_masks:
            raise XmaskError("--masks: this model has no mask head (train Stage 2 first)")
        segmentation = score_segmentation(predictor, chosen.images, request.masks)
        log.info(
            "masks of %d images: mean IoU %.3f (predicted heads), %.3f (annotated heads)",
            segmentation.images,
            segmentation.predicted.mean_iou,
            segmentation.given.mean_iou,
        )
    report = EvaluationReport(
        loaded.source,
        request.which,
        predictor.backend,
        chosen.name,
        chosen.root,
        request.split,
        chosen.images.max_short_side,
        csv,
        result,
        segmentation,
    )
    name = chosen.name
    if request.record:
        extra = {} if segmentation is None else {"segmentation": segmentation.to_dict()}
        key = f"{name}-{request.split}"
        written = record_metrics(loaded.source, key, result.to_dict() | extra)
        log.info("recorded %s (%d images) in %s", key, result.images, written / "model.json")
    return report
