"""Evaluate a counting model on a dataset split: counts, MAE/RMSE and point localisation.

Protocol (the field's, ``docs/equations.md``): full test images, batch 1, the model in eval mode
under ``torch.inference_mode``. An image becomes a ``1×3×H×W`` float tensor in ``[0, 1]``; the count
is the number of stride-4 cells with logit > 0 and the predicted points are those cells' centres
(:func:`xmask.models.count_head.decode_points`). Images are evaluated at the size the dataset gives
them (its ``max_short_side`` resize rule, if any); localisation distances are converted back to the
original image's pixels (divided by :attr:`xmask.types.Sample.scale`), so the thresholds ``σ`` are
in original pixels.

Large images run in tiles (:mod:`xmask.inference.tiling`).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from xmask.data.image_io import atomic_write_bytes
from xmask.data.readers import CrowdDataset
from xmask.errors import DataError
from xmask.inference import tiling
from xmask.inference.count_rule import CountRule, as_count_rule
from xmask.inference.scale import ONE_PASS, ScaleRule, adaptive_outputs
from xmask.metrics.counting import mae, rmse
from xmask.metrics.localisation import (
    DEFAULT_THRESHOLDS,
    MatchCounts,
    localisation_counts,
    threshold_key,
)
from xmask.models.fusion import inference_copy
from xmask.types import Sample

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One evaluated image (a row of the per-image CSV).

    Attributes:
        name: image name.
        height: rows of the evaluated image (after the dataset's resize rule).
        width: columns of the evaluated image.
        tiles: tiles it ran in (1: whole).
        gt_count: ground-truth head points.
        pred_count: cells with logit above the count threshold.
        matches: ``{σ: MatchCounts}`` localisation counts per threshold.
    """

    name: str
    height: int
    width: int
    tiles: int
    gt_count: int
    pred_count: int
    matches: dict[float, MatchCounts]

    @property
    def abs_error(self) -> int:
        """``|pred_count − gt_count|``."""
        return abs(self.pred_count - self.gt_count)


@dataclass
class EvaluationResult:
    """Per-image rows and dataset totals of one evaluation.

    Attributes:
        rows: one :class:`ImageResult` per image evaluated, in dataset order.
        thresholds: localisation thresholds ``σ`` in pixels.
        skipped: ``{"name", "problem"}`` of every item that could not be read.
        seconds: wall time of the whole evaluation.
        count_rule: which cells were counted (:class:`~xmask.inference.count_rule.CountRule`).
    """

    rows: list[ImageResult]
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    count_rule: CountRule = field(default_factory=lambda: CountRule(0.0))

    @property
    def images(self) -> int:
        """Images evaluated."""
        return len(self.rows)

    @property
    def mae(self) -> float:
        """Mean absolute count error (NaN without images)."""
        return mae([r.pred_count for r in self.rows], [r.gt_count for r in self.rows])

    @property
    def rmse(self) -> float:
        """Root mean squared count error, the field's "MSE" (NaN without images)."""
        return rmse([r.pred_count for r in self.rows], [r.gt_count for r in self.rows])

    @property
    def localisation(self) -> dict[float, MatchCounts]:
        """``{σ: MatchCounts}`` summed over images (micro totals)."""
        totals = {t: MatchCounts() for t in self.thresholds}
        for row in self.rows:
            for t in self.thresholds:
                totals[t] = totals[t] + row.matches[t]
        return totals

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary: ``images``, ``mae``, ``rmse`` (None without images),
        ``gt_total``, ``pred_total``, ``count_threshold`` (the sparse or only threshold),
        ``count_rule`` (:meth:`~xmask.inference.count_rule.CountRule.describe`), ``localisation``
        (``{"4": {precision, recall, f1, tp, fp, fn}, ...}``), ``skipped`` and ``seconds``."""
        empty = not self.rows
        return {
            "images": self.images,
            "mae": None if empty else self.mae,
            "rmse": None if empty else self.rmse,
            "gt_total": sum(r.gt_count for r in self.rows),
            "pred_total": sum(r.pred_count for r in self.rows),
            "count_threshold": self.count_rule.threshold,
            "count_rule": self.count_rule.describe(),
            "localisation": {threshold_key(t): c.to_dict() for t, c in self.localisation.items()},
            "skipped": list(self.skipped),
            "seconds": self.seconds,
        }

    def csv_text(self) -> str:
        """Per-image rows as CSV: ``name, height, width, tiles, gt_count, pred_count,
        abs_error`` and ``tp_σ, fp_σ, fn_σ`` per threshold."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        keys = [threshold_key(t) for t in self.thresholds]
        header = ["name", "height", "width", "tiles", "gt_count", "pred_count", "abs_error"]
        writer.writerow(header + [f"{k}_{key}" for key in keys for k in ("tp", "fp", "fn")])
        for r in self.rows:
            counts = [getattr(r.matches[t], k) for t in self.thresholds for k in ("tp", "fp", "fn")]
            base = [r.name, r.height, r.width, r.tiles, r.gt_count, r.pred_count, r.abs_error]
            writer.writerow(base + counts)
        return buffer.getvalue()

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`csv_text` to ``path`` atomically (UTF-8)."""
        atomic_write_bytes(path, self.csv_text().encode("utf-8"))


def format_result(result: EvaluationResult) -> str:
    """Human-readable summary of an evaluation."""
    lines = [
        f"images      {result.images:,}",
        f"MAE         {result.mae:.2f}",
        f"RMSE (MSE)  {result.rmse:.2f}",
        f"heads       {sum(r.gt_count for r in result.rows):,} true / "
        f"{sum(r.pred_count for r in result.rows):,} predicted "
        f"(cells with logit > {result.count_rule.describe()})",
    ]
    for t, c in result.localisation.items():
        lines.append(
            f"σ = {threshold_key(t)} px    P {c.precision:.3f}  R {c.recall:.3f}  F1 {c.f1:.3f}"
            f"  (TP {c.tp:,}, FP {c.fp:,}, FN {c.fn:,})"
        )
    lines.append(f"skipped     {len(result.skipped)}")
    lines += [f"  {s['name']}: {s['problem']}" for s in result.skipped]
    return "\n".join(lines)


def evaluate_sample(
    model: nn.Module,
    sample: Sample,
    device: torch.device | str,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    count_threshold: float | CountRule = 0.0,
    max_pixels: int | None = tiling.MAX_PIXELS,
    tile: int = tiling.TILE,
    overlap: int = tiling.OVERLAP,
    scale: ScaleRule = ONE_PASS,
) -> ImageResult:
    """Count and localise the heads of one sample (call under ``torch.inference_mode()``
    with the model in eval mode on ``device``); see :func:`evaluate_model`."""
    rule = as_count_rule(count_threshold)
    scaled = adaptive_outputs(
        model, sample.image, device, scale, rule, max_pixels=max_pixels, tile=tile, overlap=overlap
    )
    pred = scaled.head_points(scaled.heads(rule).points)
    tiles = scaled.tiles
    # Distances in the original image's pixels: both point sets shrank by sample.scale.
    matches = localisation_counts(pred / sample.scale, sample.points / sample.scale, thresholds)
    height, width = sample.size
    return ImageResult(sample.name, height, width, tiles, sample.count, len(pred), matches)


def evaluate_model(
    model: nn.Module,
    dataset: CrowdDataset | Sequence[Sample],
    device: torch.device | str,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    count_threshold: float | CountRule = 0.0,
    max_pixels: int | None = tiling.MAX_PIXELS,
    tile: int = tiling.TILE,
    overlap: int = tiling.OVERLAP,
    scale: ScaleRule = ONE_PASS,
    progress: bool = True,
    network: tiling.Network | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` on every image of ``dataset``, one full image at a time.

    An :func:`~xmask.models.fusion.inference_copy` of the model runs under
    ``torch.inference_mode`` (the model itself is untouched); it must already be on
    ``device``. Items the dataset cannot read (:class:`~xmask.errors.DataError`) are logged,
    listed in ``skipped`` and left out.

    Args:
        model: maps ``1×3×H×W`` float RGB in ``[0, 1]`` to :class:`~xmask.types.ModelOutput`
            with ``1×1×ceil(H/4)×ceil(W/4)`` logits.
        dataset: a :class:`~xmask.data.readers.CrowdDataset` (or any sequence of samples),
            already carrying its resize rule (``max_short_side``).
        device: where the images go.
        thresholds: localisation thresholds ``σ`` in original-image pixels.
        count_threshold: cells with a logit above it are counted and localised (0: the
            paper's rule; a calibrated value or two-regime rule:
            :mod:`xmask.inference.calibration`).
        max_pixels: images with more pixels run in tiles (module docstring; None: never).
        tile: tile side in pixels (a multiple of 16).
        overlap: least overlap of neighbouring tiles (a multiple of 16).
        scale: how the network input is sized from each image
            (:class:`~xmask.inference.scale.ScaleRule`; default: as it is, one pass).
        progress: show a tqdm bar on stderr.
        network: what runs instead of ``model`` (e.g. a :class:`~xmask.inference.predictor.
            Predictor`'s onnx or int8 network); None: an inference copy of ``model``.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        ValueError: bad tiling arguments (checked before the first image).
    """
    thresholds = tuple(float(t) for t in thresholds)
    tiling.check_tiling(tile, overlap)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    names = getattr(dataset, "names", None)
    rule = as_count_rule(count_threshold)
    result = EvaluationResult(rows=[], thresholds=thresholds, count_rule=rule)
    start = time.perf_counter()
    abs_sum = 0
    network = inference_copy(model) if network is None else network
    bar = tqdm(range(len(dataset)), desc="evaluate", unit="img", disable=not progress)
    try:
        with torch.inference_mode():
            for index in bar:
                try:
                    sample = dataset[index]
                except DataError as err:
                    name = names[index] if names is not None else str(index)
                    log.warning("skipped %s: %s", name, err)
                    result.skipped.append({"name": name, "problem": str(err)})
                    continue
                row = evaluate_sample(
                    network,
                    sample,
                    device,
                    thresholds=thresholds,
                    count_threshold=rule,
                    max_pixels=max_pixels,
                    tile=tile,
                    overlap=overlap,
                    scale=scale,
                )
                result.rows.append(row)
                abs_sum += row.abs_error
                bar.set_postfix(mae=f"{abs_sum / result.images:.2f}", refresh=False)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    log.info(
        "evaluated %d images (%d skipped): MAE %.2f, RMSE %.2f",
        result.images,
        len(result.skipped),
        result.mae,
        result.rmse,
    )
    return result
