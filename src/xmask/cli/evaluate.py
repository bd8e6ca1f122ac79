"""``xmask evaluate``: count and localisation metrics of a trained model on a dataset split."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields

from xmask.cli import EXIT_OK, EXIT_SKIPPED
from xmask.cli._args import (
    BACKEND_CHOICES,
    add_device_option,
    add_image_limit_option,
    add_model_options,
)

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
    add_model_options(parser)
    parser.add_argument(
        "--dataset", help="sha, shb, ucf, jhu or folder (default: the model's training data)"
    )
    parser.add_argument(
        "--root",
        help="dataset folder (default: a run's own training data when it is on this machine, "
        "else the config file's or $XMASK_DATA's; see README, Data)",
    )
    parser.add_argument("--split", default="test", help="train, test (jhu: also val)")
    parser.add_argument(
        "--max-short-side",
        type=int,
        metavar="PX",
        help="resize images whose shorter side is longer (default: the run's rule when "
        "evaluating the run's dataset)",
    )
    add_device_option(parser)
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="torch",
        help="what runs the network: torch (default: the figures a model card records), onnx, "
        "onnx-int8, or auto (as `xmask predict` runs it: the int8 graph on a CPU when the "
        "model has one); not with --record unless torch",
    )
    add_image_limit_option(parser)
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
        help="store the figures (with the number of images) in the model folder's model.json "
        "under 'DATASET-SPLIT' (model folders only; an installed model is first copied to "
        "$XMASK_MODELS/NAME, which then hides it, and the record goes there)",
    )
    parser.add_argument(
        "--csv",
        metavar="FILE",
        help="per-image CSV (default: RUN/eval-DATASET-SPLIT.csv for a run, "
        "MODEL/eval-DATASET-SPLIT.csv for your model folder, $XMASK_MODELS/NAME/"
        "eval-DATASET-SPLIT.csv for an installed one)",
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
    """``xmask evaluate``: :func:`xmask.evaluation.run.run_evaluation` of the options."""
    from xmask.evaluation.run import EvaluationRequest, run_evaluation

    given = {
        field.name: getattr(args, field.name)
        for field in fields(EvaluationRequest)
        if getattr(args, field.name, None) is not None
    }
    if args.sigma is not None:
        given["thresholds"] = tuple(args.sigma)
    request = EvaluationRequest(**given)
    report = run_evaluation(request)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return EXIT_SKIPPED if report.skipped else EXIT_OK
