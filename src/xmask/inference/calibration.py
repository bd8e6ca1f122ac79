"""Count-threshold calibration on labeled images.

A P2R counter counts the cells whose logit is above 0. Trained briefly (the positive cell of
each head weighs 2 in the BCE), it over-counts by a steady fraction: on ShanghaiTech B 40 %
(CPU recipe, epoch-30 teacher) 30 labeled training images gave 3,563 cells above 0 for 2,897
heads, and 30 unlabeled-pool images, whose labels training never saw, 4,427 for 3,818: the
same +20 %. The logit threshold that minimises the count MAE over the labeled training images
(full images, the evaluation path) removes that bias without looking at any test image:
logit 0.25 there gave MAE 13.8 / 12.8 on those two sets instead of 23.1 / 20.8.

The threshold belongs to one set of weights: it is stored beside the checkpoint it was
computed for (``calibration.json`` in ``RUN/checkpoints/`` or ``RUN/best/``, one entry per
network with its step) and only used for that step.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xmask.data.readers import CrowdDataset
from xmask.errors import XmaskError
from xmask.inference.checkpoint import CheckpointError, latest_step, write_json
from xmask.inference.count_rule import CountRule, fit_count_rule
from xmask.inference.run_folder import weights_folder
from xmask.inference.scale import ONE_PASS, ScaleRule, adaptive_outputs
from xmask.inference.tiling import MAX_PIXELS
from xmask.models.fusion import inference_copy
from xmask.types import Sample

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(round(-2.0 + 0.05 * i, 2) for i in range(101))
"""Logit thresholds tried: −2 to 3 in steps of 0.05 (probabilities 0.12 to 0.95)."""


@dataclass(frozen=True)
class CountCalibration:
    """A calibrated count threshold.

    Attributes:
        threshold: logit threshold; the count is the number of cells with logit above it
            (of sparse images when ``split`` is set).
        mae: count MAE of the calibrated rule on the calibration images.
        mae_at_zero: count MAE at the uncalibrated threshold 0 on the same images.
        images: calibration images.
        step: optimiser step of the weights it was computed for.
        which: ``"teacher"`` or ``"student"``.
        split: density (heads per 10,000 px at ``threshold``) above which an image is dense,
            or None: one threshold for every image (calibrations written before the split
            existed have none).
        dense_threshold: threshold of dense images, or None.
    """

    threshold: float
    mae: float
    mae_at_zero: float
    images: int
    step: int
    which: str
    split: float | None = None
    dense_threshold: float | None = None

    @property
    def rule(self) -> CountRule:
        """The count rule this calibration stands for."""
        return CountRule(self.threshold, self.split, self.dense_threshold)


def counts_above(logits: Tensor, candidates: Tensor) -> Tensor:
    """Cells with logit strictly above each candidate threshold.

    Args:
        logits: any shape, float; flattened.
        candidates: ``K`` float thresholds.

    Returns:
        ``K int64`` counts.
    """
    ordered = logits.detach().flatten().float().sort().values
    return ordered.numel() - torch.searchsorted(ordered, candidates.float(), right=True)


def threshold_maes(counts: Tensor, true_counts: Sequence[int]) -> Tensor:
    """Count MAE over images at each candidate threshold.

    Args:
        counts: ``N×K`` predicted counts (:func:`counts_above` of each of ``N`` images).
        true_counts: ``N`` true head counts.

    Returns:
        ``K float64`` mean absolute errors.
    """
    if counts.shape[0] != len(true_counts) or not len(true_counts):
        raise ValueError(
            f"need equally many count rows and true counts, at least one: "
            f"{counts.shape[0]} and {len(true_counts)}"
        )
    truth = torch.tensor(list(true_counts), dtype=torch.float64)[:, None]
    return (counts.double() - truth).abs().mean(dim=0)


def pick_threshold(maes: Tensor, candidates: Tensor) -> int:
    """Index of the lowest MAE; ties go to the threshold closest to 0, then the lower one."""
    tied = (maes <= maes.min()).nonzero().flatten().tolist()
    return min(tied, key=lambda i: (abs(float(candidates[i])), float(candidates[i])))


def calibrate_count_threshold(
    model: nn.Module,
    samples: CrowdDataset | Sequence[Sample],
    device: torch.device | str,
    *,
    step: int,
    which: str,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    max_pixels: int | None = MAX_PIXELS,
    two_regimes: bool = False,
    scale: ScaleRule = ONE_PASS,
    progress: bool = True,
) -> CountCalibration:
    """The count threshold that minimises the MAE over ``samples`` (full images, batch 1).

    Args:
        model: the counter, on ``device`` (an
            :func:`~xmask.models.fusion.inference_copy` of it runs; it is untouched).
        samples: labeled images (never test images).
        step: optimiser step of the model's weights (stored with the result).
        which: ``"teacher"`` or ``"student"`` (stored with the result).
        candidates: logit thresholds to try (must include 0).
        two_regimes: also try one threshold for sparse and one for dense images
            (:func:`choose_calibration`).
        scale: how the network input is sized from each image, as it will be at inference
            (:class:`~xmask.inference.scale.ScaleRule`; its enlarged pass is decided with
            threshold 0).

    Raises:
        ValueError: no samples, or 0 not among the candidates.
    """
    thresholds = torch.tensor(sorted(set(candidates)), dtype=torch.float64)
    if not (thresholds == 0).any():
        raise ValueError("the candidate thresholds must include 0")
    counts: list[Tensor] = []
    true_counts: list[int] = []
    pixels: list[int] = []
    network = inference_copy(model)
    with torch.inference_mode():
        for sample in tqdm(samples, desc="calibrate", unit="img", disable=not progress):
            scaled = adaptive_outputs(
                network, sample.image, device, scale, CountRule(0.0), max_pixels=max_pixels
            )
            counts.append(counts_above(scaled.outputs.logits.cpu(), thresholds))
            true_counts.append(sample.count)
            pixels.append(scaled.size[0] * scaled.size[1])
    return choose_calibration(
        torch.stack(counts),
        true_counts,
        pixels,
        thresholds,
        step=step,
        which=which,
        two_regimes=two_regimes,
    )


def choose_calibration(
    counts: Tensor,
    true_counts: Sequence[int],
    pixels: Sequence[int],
    thresholds: Tensor,
    *,
    step: int,
    which: str,
    two_regimes: bool,
) -> CountCalibration:
    """The calibration of ``N`` images' counts at ``K`` candidate thresholds.

    The single threshold is :func:`pick_threshold`'s. With ``two_regimes`` a
    :func:`~xmask.inference.count_rule.fit_count_rule` split replaces it only when it lowers the
    MAE; each regime must hold at least 5 images and a tenth of them.

    Args:
        counts: ``N×K`` cells above each threshold.
        true_counts: ``N`` true head counts.
        pixels: ``N`` image sizes (height × width of the network input).
        thresholds: ``K`` ascending candidate thresholds, 0 among them.
    """
    maes = threshold_maes(counts, true_counts)
    index = pick_threshold(maes, thresholds)
    zero = int((thresholds == 0).nonzero()[0])
    rule, mae = CountRule(float(thresholds[index])), float(maes[index])
    if two_regimes:
        fitted, fitted_mae = fit_count_rule(
            counts,
            torch.tensor(list(true_counts), dtype=torch.float64),
            torch.tensor(list(pixels), dtype=torch.float64),
            thresholds,
            min_images=max(5, math.ceil(len(true_counts) / 10)),
        )
        if fitted.split is not None and fitted_mae < mae:
            rule, mae = fitted, fitted_mae
    return CountCalibration(
        threshold=rule.threshold,
        mae=mae,
        mae_at_zero=float(maes[zero]),
        images=len(true_counts),
        step=step,
        which=which,
        split=rule.split,
        dense_threshold=rule.dense_threshold,
    )


def write_calibration(folder: str | Path, calibration: CountCalibration) -> Path:
    """Add (or replace) the entry of ``calibration.which`` in ``folder/calibration.json``."""
    path = Path(folder) / CALIBRATION_FILE
    entries = _read_entries(path) if path.is_file() else {}
    entries[calibration.which] = asdict(calibration)
    write_json(path, entries)
    return path


def _read_entries(path: Path) -> dict[str, dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"unreadable calibration file ({err})") from err
    if not isinstance(entries, dict):
        raise CheckpointError(path, "calibration file is not a JSON object")
    return entries


def weights_location(path: str | Path) -> tuple[Path, int | None]:
    """The checkpoint folder and step that :func:`~xmask.train.run_folder.load_trained_model`
    reads for ``path`` (a run folder, its ``checkpoints/`` or ``best/``, or a weights file);
    the step is None where it cannot be known (a file not named ``step-N.safetensors``)."""
    path = Path(path).expanduser()
    folder = weights_folder(path)
    if path.is_file():
        match = re.fullmatch(r"step-(\d+)", path.stem)
        return folder, int(match.group(1)) if match else None
    return folder, latest_step(folder)


def read_calibration(path: str | Path, which: str) -> CountCalibration | None:
    """The calibration stored for the weights ``path`` names, or None: no calibration file, no
    entry for ``which``, or one computed for another step (logged)."""
    folder, step = weights_location(path)
    file = folder / CALIBRATION_FILE
    if not file.is_file():
        return None
    entry = _read_entries(file).get(which)
    if entry is None:
        return None
    try:
        calibration = CountCalibration(**entry)
    except TypeError as err:
        raise CheckpointError(file, f"bad '{which}' entry ({err})") from err
    if calibration.step != step:
        log.warning(
            "%s: the %s threshold was calibrated at step %d, the weights are from step %s; "
            "ignoring it",
            file,
            which,
            calibration.step,
            step,
        )
        return None
    return calibration


def calibrate_weights(
    model: nn.Module,
    samples: CrowdDataset | Sequence[Sample],
    folder: str | Path,
    *,
    step: int,
    which: str,
    device: torch.device | str,
    two_regimes: bool = False,
    scale: ScaleRule = ONE_PASS,
    progress: bool = True,
) -> CountCalibration:
    """Calibrate ``model`` (the ``which`` network of the checkpoint at ``step`` in
    ``folder``) on ``samples`` (:func:`calibrate_count_threshold`, the network input sized by
    ``scale``), store the result in ``folder`` and log it."""
    calibration = calibrate_count_threshold(
        model,
        samples,
        device,
        step=step,
        which=which,
        two_regimes=two_regimes,
        scale=scale,
        progress=progress,
    )
    write_calibration(folder, calibration)
    log.info(
        "%s count threshold %s on %d images: MAE %.2f (%.2f at 0); stored in %s",
        which,
        calibration.rule.describe(),
        calibration.images,
        calibration.mae,
        calibration.mae_at_zero,
        Path(folder) / CALIBRATION_FILE,
    )
    return calibration


def resolve_count_rule(
    option: str | float | CountRule, checkpoint: str | Path, which: str
) -> CountRule:
    """The count rule a user asks for: a rule, a finite number (one threshold), or ``"auto"``:
    the calibration stored for these weights, else 0 (``xmask evaluate --threshold``, the
    predictor).

    Raises:
        XmaskError: neither ``"auto"`` nor a finite number.
    """
    if isinstance(option, CountRule):
        return option
    if option != "auto":
        try:
            value = float(option)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise XmaskError(f"--threshold: expected auto or a finite number, got {option!r}")
        return CountRule(value)
    calibration = read_calibration(checkpoint, which)
    if calibration is None:
        log.info("count threshold 0 (no calibration stored for these weights)")
        return CountRule(0.0)
    log.info(
        "count threshold %s, calibrated on %d labeled images (MAE %.2f there, %.2f at 0)",
        calibration.rule.describe(),
        calibration.images,
        calibration.mae,
        calibration.mae_at_zero,
    )
    return calibration.rule
