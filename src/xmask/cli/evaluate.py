"""``xmask evaluate``: count and localisation metrics of a trained model on a dataset split."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from xmask.cli import EXIT_OK, EXIT_SKIPPED

if TYPE_CHECKING:
    import torch

    from xmask.count_rule import CountRule
    from xmask.data.readers import CrowdDataset
    from xmask.model_folder import InferenceModel
    from xmask.segment.scoring import SegmentationScores

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask evaluate``."""
    parser = sub.add_parser(
        "evaluate",
        help="MAE, RMSE and localisation P/R/F1 of a trained model on a dataset split",
        description="Run a trained model on every full image of a split (batch 1; very large "
        "images in overlapping tiles) and report MAE, RMSE (the field's 'MSE') and point "
        "localisation precision/recall/F1 at distance thresholds. Writes one CSV row per "
        f"image. Bad items are reported and skipped (exit code {EXIT_SKIPPED}).",
    )
    parser.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        metavar="MODEL",
        help="a model name, a model folder, or a training run (its folder, checkpoints/ or "
        "best/, or a .safetensors file in it); default: the model shipped with xmask",
    )
    parser.add_argument(
        "--which", choices=("teacher", "student"), default="teacher", help="network to evaluate"
    )
    parser.add_argument(
        "--dataset", help="sha, shb, ucf, jhu or folder (default: the model's training data)"
    )
    parser.add_argument("--root", help="dataset folder (default: the model's training data)")
    parser.add_argument("--split", default="test", help="train, test (jhu: also val)")
    parser.add_argument(
        "--max-short-side",
        type=int,
        metavar="PX",
        help="resize images whose shorter side is longer (default: the run's rule when "
        "evaluating the run's dataset)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N"
    )
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument(
        "--labeled", metavar="SPLIT", help="only the labeled images of a split list (train split)"
    )
    subset.add_argument(
        "--unlabeled",
        metavar="SPLIT",
        help="only the unlabeled pool of a split list: images whose labels training never saw, "
        "for checking a run without touching the test set",
    )
    parser.add_argument(
        "--threshold",
        default="auto",
        metavar="LOGIT",
        help="count cells with a logit above this; auto (default): the threshold "
        "`xmask calibrate` (or the end of training) stored for these weights, else 0",
    )
    parser.add_argument(
        "--masks",
        metavar="DIR",
        help="also score the instance masks (models with a mask head) against the label maps "
        "of an annotation folder (DIR/masks/*.png, e.g. from `xmask annotate`): mean IoU and "
        "P/R/F1 at IoU 0.5, for the predicted heads and for the annotation's own points",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.add_argument(
        "--record",
        action="store_true",
        help="store the figures in the model folder's model.json under 'DATASET-SPLIT' "
        "(model folders only)",
    )
    parser.add_argument(
        "--csv",
        metavar="FILE",
        help="per-image CSV (default: RUN/eval-DATASET-SPLIT.csv for a run, else "
        "eval-MODEL-DATASET-SPLIT.csv here)",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        nargs="+",
        metavar="PX",
        help="localisation distance thresholds in pixels (default: 4 8)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="images with more pixels run in tiles (default: 2048·2048)",
    )
    parser.add_argument("--tile", type=int, metavar="PX", help="tile side (default: 1024)")
    parser.add_argument(
        "--overlap", type=int, metavar="PX", help="overlap of neighbouring tiles (default: 128)"
    )
    parser.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """``xmask evaluate``."""
    from xmask.data.readers import open_dataset
    from xmask.data.splits import semi_split
    from xmask.device import resolve_device
    from xmask.errors import XmaskError
    from xmask.evaluation import (
        MAX_PIXELS,
        OVERLAP,
        TILE,
        check_tiling,
        evaluate_model,
        format_result,
    )
    from xmask.metrics import DEFAULT_THRESHOLDS
    from xmask.model_folder import load_inference_model

    tile = TILE if args.tile is None else args.tile
    overlap = OVERLAP if args.overlap is None else args.overlap
    max_pixels = MAX_PIXELS if args.max_pixels is None else args.max_pixels
    thresholds = DEFAULT_THRESHOLDS if args.sigma is None else tuple(args.sigma)
    try:
        check_tiling(tile, overlap)
    except ValueError as err:
        raise XmaskError(f"--tile/--overlap: {err}") from err
    if max_pixels < 1 or min(thresholds) <= 0:
        raise XmaskError("--max-pixels and --sigma must be positive")

    device = resolve_device(args.device)
    loaded = load_inference_model(args.model, device, args.which, args.threshold)
    model, count_rule, source = loaded.model, loaded.count_rule, loaded.source
    trained = loaded.dataset or (None, None, None)
    dataset_name = args.dataset or trained[0]
    root = args.root or trained[1]
    if dataset_name is None or not root:
        raise XmaskError(f"{source}: the model does not say its data; give --dataset and --root")
    max_short_side = args.max_short_side
    if max_short_side is None and dataset_name == trained[0]:
        max_short_side = trained[2]
    dataset = open_dataset(dataset_name, root, args.split, max_short_side=max_short_side)
    if args.labeled or args.unlabeled:
        part = semi_split(dataset.names, args.labeled or args.unlabeled)
        dataset = dataset.subset(part.labeled if args.labeled else part.unlabeled)
    if len(dataset) == 0:
        raise XmaskError(f"{root}: no images in the {args.split} split of {dataset_name}")
    result = evaluate_model(
        model,
        dataset,
        device,
        thresholds=thresholds,
        count_threshold=count_rule,
        max_pixels=max_pixels,
        tile=tile,
        overlap=overlap,
    )
    csv_path = Path(args.csv) if args.csv else _default_csv(loaded, dataset_name, args.split)
    result.write_csv(csv_path)
    log.info("wrote per-image results to %s", csv_path)
    segmentation = None
    if args.masks:
        segmentation = _score_masks(
            model, device, count_rule, dataset, args.masks, tile, overlap, max_pixels
        )
    if args.json:
        header = {
            "model": str(source),
            "which": args.which,
            "dataset": dataset_name,
            "root": str(root),
            "split": args.split,
            "max_short_side": max_short_side,
            "csv": str(csv_path),
        }
        extra = {} if segmentation is None else {"segmentation": segmentation.to_dict()}
        print(json.dumps(header | result.to_dict() | extra, indent=2))
    else:
        print(f"{source} ({args.which}) on {dataset_name} {args.split} ({root})")
        print(format_result(result))
        if segmentation is not None:
            for name in ("predicted", "given"):
                counts = getattr(segmentation, name)
                print(
                    f"masks ({name} heads): mean IoU {counts.mean_iou:.3f}, P/R/F1@0.5 "
                    f"{counts.precision:.3f}/{counts.recall:.3f}/{counts.f1:.3f}"
                )
        print(f"per-image results: {csv_path}")
    if args.record:
        _record(loaded, f"{dataset_name}-{args.split}", result.to_dict(), segmentation)
    skipped = result.skipped or (segmentation is not None and segmentation.skipped)
    return EXIT_SKIPPED if skipped else EXIT_OK


def _default_csv(loaded: InferenceModel, dataset: str, split: str) -> Path:
    """``RUN/eval-DATASET-SPLIT.csv`` for a run, ``eval-MODEL-DATASET-SPLIT.csv`` here for a
    model folder (which may be read-only, inside the package)."""
    from xmask.train.run_folder import find_run_folder

    if loaded.card is None:
        return find_run_folder(loaded.source).root / f"eval-{dataset}-{split}.csv"
    return Path(f"eval-{loaded.card.name}-{dataset}-{split}.csv")


def _record(
    loaded: InferenceModel,
    key: str,
    figures: dict,
    segmentation: SegmentationScores | None,
) -> None:
    """``--record``: the figures into the model folder's card."""
    from xmask.errors import XmaskError
    from xmask.model_folder import record_metrics

    if loaded.card is None:
        raise XmaskError(f"{loaded.source}: --record needs a model folder, not a run")
    extra = {} if segmentation is None else {"segmentation": segmentation.to_dict()}
    record_metrics(loaded.source, key, figures | extra)
    log.info("recorded %s in %s", key, loaded.source / "model.json")


def _score_masks(
    model: torch.nn.Module,
    device: torch.device,
    count_rule: CountRule,
    dataset: CrowdDataset,
    masks: str,
    tile: int,
    overlap: int,
    max_pixels: int,
) -> SegmentationScores:
    """``--masks``: :func:`xmask.segment.scoring.score_segmentation` of the evaluated model."""
    from xmask.errors import XmaskError
    from xmask.predictor import Predictor
    from xmask.segment.scoring import score_segmentation

    predictor = Predictor(
        model,
        device,
        count_rule,
        max_pixels=max_pixels,
        tile=tile,
        overlap=overlap,
    )
    if not predictor.has_masks:
        raise XmaskError("--masks: this model has no mask head (train Stage 2 first)")
    scores = score_segmentation(predictor, dataset, masks)
    log.info(
        "masks of %d images: mean IoU %.3f (predicted heads), %.3f (annotated heads)",
        scores.images,
        scores.predicted.mean_iou,
        scores.given.mean_iou,
    )
    return scores
