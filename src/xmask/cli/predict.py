"""``xmask predict`` (alias ``segment``): counts, head points and one mask per head for images,
folders, glob patterns, videos or a dataset split; the output layout is
:mod:`xmask.apps.batch`'s (images) and :mod:`xmask.apps.video`'s (videos)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xmask.cli import EXIT_OK, EXIT_SKIPPED
from xmask.cli._args import add_device_option, add_model_options

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask predict``."""
    parser = sub.add_parser(
        "predict",
        aliases=["segment"],
        help="count, head points and one mask per head for images, folders or videos",
        description="Run a model on images, folders, glob patterns ('photos/**/*.jpg', quoted) "
        "or videos and write, per image, OUT/predictions/NAME.json (count, points, scores, "
        "mask areas), OUT/points/NAME.txt, OUT/masks/NAME.png (16-bit label map) and "
        "OUT/overlays/NAME.png; OUT/annotations.json (COCO, RLE masks) and OUT/summary.json "
        "for the run; per video, OUT/videos/NAME.mp4 (annotated), NAME.csv (count per frame) "
        "and NAME-counts.png. A re-run skips finished items. Very large images run in "
        f"tiles. Bad files are reported and skipped (exit code {EXIT_SKIPPED}).",
    )
    parser.add_argument(
        "source", nargs="*", metavar="SOURCE", help="image or video files, folders or patterns"
    )
    add_model_options(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder (default: predict-NAME)")
    parser.add_argument(
        "--roi",
        metavar="POLYGON",
        help="count only inside this polygon: 'x1,y1 x2,y2 x3,y3 ...' in pixels, or a file "
        "holding it (or a JSON list of [x, y])",
    )
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="videos: predict every N-th frame"
    )
    parser.add_argument("--dataset", help="instead of SOURCE: sha, shb, ucf, jhu or folder")
    parser.add_argument("--root", help="dataset folder (with --dataset)")
    parser.add_argument("--split", default="test", help="split (with --dataset; default test)")
    add_device_option(parser)
    parser.set_defaults(run=run_predict)


def _default_out(args: argparse.Namespace) -> Path:
    if args.dataset is not None:
        return Path(f"predict-{args.dataset}-{args.split}")
    name = Path(args.source[0]).stem.replace("*", "") or "images"
    return Path(f"predict-{name}")


def run_predict(args: argparse.Namespace) -> int:
    """``xmask predict``."""
    from xmask.apps.batch import BatchSummary, dataset_sources, find_sources, finish, predict_images
    from xmask.apps.roi import read_polygon
    from xmask.apps.video import predict_video
    from xmask.errors import DataError, UsageError
    from xmask.inference.predictor import Predictor

    if bool(args.source) == (args.dataset is not None):
        raise UsageError("xmask predict needs either SOURCE or --dataset (with --root)")
    if args.dataset is not None and args.root is None:
        raise UsageError("xmask predict --dataset needs --root")
    if args.every < 1:
        raise UsageError(f"--every must be at least 1, got {args.every}")
    if args.dataset is not None:
        sources = dataset_sources(args.dataset, args.root, args.split)
    else:
        sources = find_sources(args.source)
    if not sources:
        raise UsageError(f"{' '.join(args.source) or args.root}: no images or videos")
    roi = None if args.roi is None else read_polygon(args.roi)
    predictor = Predictor.load(args.model, args.device, args.which, args.threshold, args.scale)
    model = str(predictor.source)
    out = Path(args.out) if args.out else _default_out(args)
    images = [s for s in sources if not s.is_video]
    summary = predict_images(
        predictor, images, out, model=model, roi=roi,
        summary=BatchSummary(model, predictor.count_rule.describe()),
    )  # fmt: skip
    for video in (s for s in sources if s.is_video):
        try:
            result = predict_video(predictor, video, out, every=args.every, roi=roi)
        except DataError as err:
            summary.skip(video.name, str(err))
            continue
        if result is None:
            summary.already_done += 1
            continue
        summary.videos += 1
        summary.network_s += result.network_s
        summary.post_s += result.post_s
    finish(summary, images, out)
    print(
        f"{summary.images} images and {summary.videos} videos predicted "
        f"({summary.already_done} already done), {summary.heads:,} heads in the images, "
        f"{summary.seconds:.1f} s; {len(summary.skipped)} skipped → {out}"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK
