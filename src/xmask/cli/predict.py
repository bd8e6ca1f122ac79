"""``xmask predict`` (alias ``segment``): counts, head points and one mask per head for images,
folders, glob patterns, videos or a dataset split; the request is
:mod:`xmask.apps.predict`'s, the output layout :mod:`xmask.apps.batch`'s (images) and
:mod:`xmask.apps.video`'s (videos)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xmask.cli import EXIT_OK, EXIT_SKIPPED, plural
from xmask.cli._args import (
    ROOT_HELP,
    add_device_option,
    add_image_limit_option,
    add_model_options,
    add_root_option,
)

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
        "OUT/overlays/NAME.png; OUT/annotations.json (COCO, RLE masks), OUT/counts.csv (count "
        "per image) and OUT/summary.json for the whole folder; per video, OUT/videos/NAME.mp4 "
        "(annotated), NAME.csv (count per frame) and NAME-counts.png. With --zones, the JSON, "
        "the CSVs and the summary also hold the heads per zone. NAME keeps the sub-folder of "
        "an image found in a folder or by a pattern. A re-run keeps a finished item only if "
        "its file and every setting that changes the result are unchanged, and redoes the "
        "others. Very large images run in tiles. Bad files are reported and skipped "
        f"(exit code {EXIT_SKIPPED}).",
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
        "--zones",
        metavar="FILE",
        help="also count the heads in each named polygon of this JSON or YAML file: "
        '{"zones": [{"name": "gate", "polygon": [[x, y], ...]}, ...]} in pixels (a head '
        "counts in every zone holding its point; at most 100 zones of 3 to 1000 vertices)",
    )
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="videos: predict every N-th frame"
    )
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="folders: also the images and videos of their sub-folders (outputs keep the "
        "sub-folder: OUT/predictions/SUB/NAME.json)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo every item, even those whose outputs are up to date (and take over "
        "output names claimed by other files)",
    )
    saved = parser.add_argument_group("what each image gets")
    saved.add_argument(
        "--no-masks",
        dest="masks",
        action="store_false",
        help="no masks/NAME.png label maps (nor annotations.json); the JSON keeps mask areas",
    )
    saved.add_argument(
        "--no-overlay", dest="overlay", action="store_false", help="no overlays/NAME picture"
    )
    saved.add_argument(
        "--overlay-format",
        choices=("png", "jpg"),
        default="png",
        help="overlays as PNG (default) or JPEG (about a tenth of the size)",
    )
    saved.add_argument(
        "--mask-preview",
        action="store_true",
        help="also previews/NAME.png: the label map in colour (the 16-bit masks/NAME.png "
        "looks black in image viewers)",
    )
    saved.add_argument(
        "--heatmap",
        action="store_true",
        help="also heatmaps/NAME.png: the head points smoothed with a Gaussian, in colour over "
        "the image in dimmed grey (videos: OUT/videos/NAME-heatmap.png, all frames together)",
    )
    saved.add_argument(
        "--heatmap-sigma",
        type=float,
        metavar="PX",
        help="the heatmap's Gaussian standard deviation in pixels (default: 1%% of the "
        "image's longer side, at least 2)",
    )
    parser.add_argument("--dataset", help="instead of SOURCE: sha, shb, ucf, jhu or folder")
    add_root_option(parser, f"with --dataset: {ROOT_HELP}")
    parser.add_argument("--split", default="test", help="split (with --dataset; default test)")
    add_device_option(parser)
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="what runs the network: torch (default) or onnx (onnxruntime: the model folder's "
        "model.onnx, else the network exported in memory; pip install 'xmask-crowd[onnx]'); "
        "counts, points and masks are decoded the same way",
    )
    add_image_limit_option(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """``xmask predict``: :func:`xmask.apps.predict.run_predict` of the options."""
    from xmask.apps.batch import OutputOptions
    from xmask.apps.predict import PredictRequest
    from xmask.apps.predict import run_predict as predict
    from xmask.apps.sources import VIDEO_SUFFIXES
    from xmask.device import init_distributed, shutdown

    request = PredictRequest(
        sources=tuple(args.source), dataset=args.dataset, root=args.root, split=args.split,
        model=args.model, which=args.which, threshold=args.threshold, scale=args.scale,
        locate=args.locate, device=args.device, backend=args.backend,
        out=args.out, roi=args.roi, zones=args.zones, every=args.every, recursive=args.recursive,
        force=args.force,
        outputs=OutputOptions(
            args.masks, args.overlay, args.overlay_format, args.mask_preview, args.heatmap,
            args.heatmap_sigma,
        ),
    )  # fmt: skip
    info = init_distributed("cpu")  # torchrun: ranks share sources, gloo carries summaries
    try:
        summary = predict(request, info)
    finally:
        shutdown()
    if summary is None:  # a rank other than 0 of torchrun: rank 0 reports
        return EXIT_OK
    videos = any(Path(s).suffix.lower() in VIDEO_SUFFIXES for s in args.source)
    done = [plural(summary.predicted, "image")]
    done += [plural(summary.videos_predicted, "video")] if videos or summary.videos else []
    print(
        f"{' and '.join(done)} predicted ({summary.already_done} already done, "
        f"{summary.redone} redone); the folder holds {plural(summary.images, 'image')} with "
        f"{plural(summary.heads, 'head')}; {len(summary.skipped)} skipped → {request.out_folder}"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK
