"""``xmask data``: dataset statistics, export to the folder format, point format conversion,
synthetic crowds."""

from __future__ import annotations

import argparse
import json

from xmask.cli import EXIT_OK, EXIT_SKIPPED
from xmask.cli._args import add_image_limit_option, add_root_option


def add_dataset_arguments(parser: argparse.ArgumentParser, split_default: str = "train") -> None:
    """``--dataset``, ``--root`` and ``--split``, shared by sub-commands."""
    parser.add_argument(
        "--dataset",
        required=True,
        help="sha, shb, ucf, jhu or folder (your own images with NAME.txt/NAME.json/points.csv)",
    )
    add_root_option(parser)
    parser.add_argument("--split", default=split_default, help="train, test (jhu: also val)")
    add_image_limit_option(parser)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask data`` and its sub-commands."""
    parser = sub.add_parser(
        "data",
        help="dataset statistics, export to the folder format, point formats, synthetic crowds",
    )
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    stats = data_sub.add_parser(
        "stats",
        help="images, points and problems of a dataset split",
        description="Read every image and point file of a split; report counts, sizes, "
        "greyscale images, duplicate and out-of-image points. Bad items are reported and "
        f"skipped (exit code {EXIT_SKIPPED}).",
    )
    add_dataset_arguments(stats)
    subset = stats.add_mutually_exclusive_group()
    subset.add_argument(
        "--labeled",
        metavar="SPLIT",
        help="only the labeled images of a standard split (sha-40, shb-5, ...) or a list file",
    )
    subset.add_argument(
        "--unlabeled", metavar="SPLIT", help="only the unlabeled pool of that split"
    )
    stats.add_argument("--json", action="store_true", help="print JSON on stdout")
    stats.set_defaults(run=run_stats)

    export = data_sub.add_parser(
        "export",
        help="write a dataset split in the plain folder format (to merge datasets)",
        description="Write every readable image of a split to OUT (hard links where possible) "
        "with its points as NAME.txt, readable with --dataset folder. Run it twice with "
        "different --prefix and the same OUT to merge two datasets. Bad items are reported "
        f"and skipped (exit code {EXIT_SKIPPED}); a re-run keeps what is done.",
    )
    add_dataset_arguments(export)
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--prefix", default="", help="prepended to every file name, e.g. sha_")
    export.set_defaults(run=run_export)

    convert = data_sub.add_parser(
        "convert",
        help="head points from one format to another (LabelMe, CVAT, COCO, .mat, txt, csv)",
        description="Read the points of SRC (a point file of any format, or a folder as "
        "--dataset folder reads it) and write them to DEST in the format --to: labelme, mat "
        "and txt write one file per image into the folder DEST; cvat, coco and csv write one "
        "file (DEST, or annotations.xml / annotations.json / points.csv in the folder DEST). "
        "LabelMe, CVAT and COCO record image sizes: sources without them take them from the "
        "images beside. Bad items are reported and skipped "
        f"(exit code {EXIT_SKIPPED}).",
    )
    convert.add_argument("src", metavar="SRC", help="a point file, or a folder of images")
    convert.add_argument("dest", metavar="DEST", help="output folder or file")
    convert.add_argument(
        "--to",
        required=True,
        choices=("labelme", "cvat", "coco", "mat", "txt", "csv"),
        help="the output format",
    )
    convert.set_defaults(run=run_convert)

    synth = data_sub.add_parser(
        "synth",
        help="write synthetic crowds (images, exact points and masks) in the folder format",
        description="Draw textured head-like blobs with exact points (NAME.txt) and exact "
        "instance label maps (masks/NAME.png), readable with --dataset folder.",
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    synth.add_argument(
        "--heads", type=_pair, default=(10, 100), metavar="N|LO-HI", help="heads per image"
    )
    synth.add_argument(
        "--size", type=_size, default=(256, 256), metavar="WxH", help="image size (256x256)"
    )
    synth.add_argument("--perspective", action="store_true", help="heads grow towards the bottom")
    synth.add_argument("--format", choices=("png", "jpg"), default="png", help="image format")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.set_defaults(run=run_synth)


def run_stats(args: argparse.Namespace) -> int:
    """``xmask data stats``."""
    from xmask.data.readers import open_dataset
    from xmask.data.splits import semi_split
    from xmask.data.stats import format_stats, split_stats

    dataset = open_dataset(args.dataset, args.root, args.split)
    spec = args.labeled or args.unlabeled
    if spec:
        split = semi_split(dataset.names, spec)
        dataset = dataset.subset(split.labeled if args.labeled else split.unlabeled)
    stats = split_stats(dataset, progress=not args.json)
    print(json.dumps(stats.to_dict(), indent=2) if args.json else format_stats(stats))
    return EXIT_SKIPPED if stats.skipped else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """``xmask data export``."""
    from xmask.data.export import export_folder
    from xmask.data.readers import open_dataset

    dataset = open_dataset(args.dataset, args.root, args.split)
    summary = export_folder(dataset, args.out, prefix=args.prefix)
    print(
        f"{summary.written} images with {summary.points:,} points written to {args.out} "
        f"({summary.reencoded} re-encoded, {summary.already_done} already there, "
        f"{len(summary.skipped)} skipped)"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    """``xmask data convert``."""
    from xmask.data.convert import convert_points

    summary = convert_points(args.src, args.dest, args.to)
    where = summary.files[0] if len(summary.files) == 1 else args.dest
    print(
        f"{summary.images} images with {summary.points:,} points written to {where} "
        f"({len(summary.files)} files, {summary.unlabeled} unlabeled left out, "
        f"{len(summary.skipped)} skipped)"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK


def run_synth(args: argparse.Namespace) -> int:
    """``xmask data synth``."""
    from xmask.data.synthetic import make_crowd_folder

    height, width = args.size
    paths = make_crowd_folder(
        args.out,
        args.images,
        height=height,
        width=width,
        n_heads=args.heads,
        perspective=args.perspective,
        seed=args.seed,
        image_format=args.format,
    )
    print(f"wrote {len(paths)} images with points and masks to {args.out}")
    return EXIT_OK


def _pair(text: str) -> tuple[int, int]:
    """``"N"`` → ``(N, N)``, ``"LO-HI"`` → ``(LO, HI)``."""
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from err


def _size(text: str) -> tuple[int, int]:
    """``"WxH"`` → ``(H, W)``."""
    width, _, height = text.lower().partition("x")
    try:
        return int(height), int(width)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from err
