"""``xmask predict`` (alias ``segment``): counts, head points and one mask per head for images,
folders, glob patterns, videos, live sources or a dataset split; the request is
:mod:`xmask.apps.predict`'s, the output layout :mod:`xmask.apps.batch`'s (images),
:mod:`xmask.apps.video`'s (videos) and :mod:`xmask.apps.stream`'s (webcams, stream URLs)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xmask.cli import EXIT_OK, EXIT_SKIPPED, plural
from xmask.cli._args import (
    BACKEND_CHOICES,
    BACKEND_HELP,
    MASK_GRID_HELP,
    MASK_GRIDS,
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
        help="count, head points and one mask per head for images, folders, videos or streams",
        description="Run a model on images, folders, glob patterns ('photos/**/*.jpg', quoted), "
        "videos or live sources and write, per image, OUT/predictions/NAME.json (count, "
        "points, scores, mask areas), OUT/points/NAME.txt, OUT/masks/NAME.png (16-bit label "
        "map) and OUT/overlays/NAME.jpg; OUT/annotations.json (COCO, RLE masks), "
        "OUT/counts.csv (count per image) and OUT/summary.json for the whole folder; per "
        "video, OUT/videos/NAME.mp4 (annotated), NAME.csv (count per frame) and "
        "NAME-counts.png; per live source (a webcam index such as 0, /dev/videoN, or an "
        "rtsp://, http(s):// or rtmp:// URL), OUT/streams/NAME.csv, a row per frame appended "
        "as it goes, and NAME.json, its summary, until --duration, --frames or Ctrl-C. With "
        "--zones, the JSON, the CSVs and the summary also hold the heads per zone; with "
        "--line, the CSVs and summaries of videos and streams the people crossing each line. "
        "NAME keeps the sub-folder of an image found in a folder or by a pattern. A re-run "
        "keeps a finished item only if its file and every setting that changes the result "
        "are unchanged, and redoes the others. Very large images run in tiles. Bad files are "
        "reported and skipped "
        f"(exit code {EXIT_SKIPPED}).",
    )
    parser.add_argument(
        "source",
        nargs="*",
        metavar="SOURCE",
        help="image or video files, folders or patterns, or live sources: a webcam index (0), "
        "a video device (/dev/video0) or a stream URL (rtsp://, http(s)://, rtmp://)",
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
        "counts in every zone holding its point; at most 100 zones of 3 to 1000 vertices); "
        'it may also hold named counting lines: "lines": [{"name": "door", "line": [[x1, y1], '
        "[x2, y2]]}, ...]",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="videos and streams: predict every N-th frame",
    )
    tracking = parser.add_argument_group("counting lines (videos and streams)")
    tracking.add_argument(
        "--line",
        action="append",
        default=[],
        metavar="'X1,Y1 X2,Y2'",
        help="count the people crossing this line (pixels; repeat for more: line1, line2, ...): "
        "head points are tracked across frames and each line gets the people who crossed it "
        "in (from the left of X1,Y1 -> X2,Y2 to its right, as seen on the screen: downwards "
        "for a line drawn from left to right) and out, cumulative",
    )
    tracking.add_argument(
        "--track-distance",
        type=float,
        metavar="PX",
        help="farthest a head may move between two predicted frames and stay the same person "
        "(default: 5%% of the frame's longer side)",
    )
    tracking.add_argument(
        "--track-lost",
        type=int,
        default=5,
        metavar="N",
        help="predicted frames a person may go unseen and keep their track (default 5)",
    )
    live = parser.add_argument_group("live sources (webcams, stream URLs)")
    live.add_argument(
        "--max-fps",
        type=float,
        metavar="F",
        help="predict at most F frames per second and drop the frames that arrive meanwhile "
        "(counted in the summary) rather than fall behind (default: every frame, however late)",
    )
    live.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (wall time)"
    )
    live.add_argument("--frames", type=int, metavar="N", help="stop after N predicted frames")
    live.add_argument(
        "--save-video",
        action="store_true",
        help="also OUT/streams/NAME.mp4: the annotated frames (fragmented MP4: it plays while "
        "written)",
    )
    live.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="when the source drops, open it again up to N times in a row, waiting 1, 2, 4, "
        "... up to 30 seconds between tries (default 5)",
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
        choices=("jpg", "png"),
        default="jpg",
        help="overlays as JPEG (default) or PNG (lossless: about 6 times the size, and at "
        "1024×768 some 50 ms instead of 3 ms to encode)",
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
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help=BACKEND_HELP)
    parser.add_argument(
        "--mask-grid", type=int, choices=MASK_GRIDS, default=1, metavar="G", help=MASK_GRID_HELP
    )
    parser.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="images, videos and streams: read the next one and segment and write the last "
        "one in other threads while the network runs (default); --no-pipeline: one after "
        "another (the same results)",
    )
    add_image_limit_option(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """``xmask predict``: :func:`xmask.apps.predict.run_predict` of the options."""
    from xmask.apps.batch import OutputOptions
    from xmask.apps.live import Reconnect
    from xmask.apps.predict import PredictRequest
    from xmask.apps.predict import run_predict as predict
    from xmask.apps.sources import VIDEO_SUFFIXES
    from xmask.apps.stream import StreamOptions
    from xmask.apps.tracking import TrackerConfig
    from xmask.device import init_distributed, shutdown

    request = PredictRequest(
        sources=tuple(args.source), dataset=args.dataset, root=args.root, split=args.split,
        model=args.model, which=args.which, threshold=args.threshold, scale=args.scale,
        locate=args.locate, device=args.device, backend=args.backend, mask_grid=args.mask_grid,
        out=args.out, roi=args.roi, zones=args.zones, lines=tuple(args.line),
        tracking=TrackerConfig(args.track_distance, args.track_lost), every=args.every,
        stream=StreamOptions(
            max_fps=args.max_fps, duration_s=args.duration, frames=args.frames,
            save_video=args.save_video, reconnect=Reconnect(retries=args.retries),
        ),
        recursive=args.recursive, force=args.force, pipeline=args.pipeline,
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
    for stream in summary.streams:
        print(
            f"{stream['source']}: {plural(stream['frames_predicted'], 'frame')} predicted, "
            f"{stream['frames_dropped']} dropped, {plural(stream['reconnects'], 'reconnect')}, "
            f"stopped: {stream['stopped']} → {stream['table']}"
        )
    print(
        f"{' and '.join(done)} predicted by {summary.backend} ({summary.already_done} already "
        f"done, {summary.redone} redone); the folder holds {plural(summary.images, 'image')} with "
        f"{plural(summary.heads, 'head')}; {len(summary.skipped)} skipped → {request.out_folder}"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK
