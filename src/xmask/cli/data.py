"""``xmask data``: dataset statistics and synthetic crowds."""

from __future__ import annotations

import argparse
import json

from xmask.cli import EXIT_OK, EXIT_SKIPPED


def add_dataset_arguments(parser: argparse.ArgumentParser, split_default: str = "train") -> None:
    """``--dataset``, ``--root``, ``--split`` and ``--max-short-side``, shared by sub-commands."""
    parser.add_argument(
        "--dataset",
        required=True,
        help="sha, shb, ucf, jhu or folder (your own images with NAME.txt/NAME.json/points.csv)",
    )
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--split", default=split_default, help="train, test (jhu: also val)")
    parser.add_argument(
        "--max-short-side",
        type=int,
        default=None,
        metavar="S",
        help="shrink images whose shorter side exceeds S px (paper: ucf 1536, jhu 2048)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask data`` and its sub-commands."""
    parser = sub.add_parser("data", help="dataset statistics and synthetic crowds")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    stats = data_sub.add_parser(
        "stats",
        help="images, points and problems of a dataset split",
        description="Read every image and point file of a split; report counts, sizes, "
        "greyscale images, duplicate and out-of-image points. Bad items are reported and "
        f"skipped (exit code {EXIT_SKIPPED}).",
    )
    add_dataset_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print JSON on stdout")
    stats.set_defaults(run=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    """``xmask data stats``."""
    from xmask.data.readers import open_dataset
    from xmask.data.stats import format_stats, split_stats

    dataset = open_dataset(args.dataset, args.root, args.split)
    stats = split_stats(dataset, progress=not args.json)
    print(json.dumps(stats.to_dict(), indent=2) if args.json else format_stats(stats))
    return EXIT_SKIPPED if stats.skipped else EXIT_OK
