"""``xmask bench``: segmentation seconds per image by crowd density, xmask against baselines.

The benchmark itself (what is timed, the bins) is :mod:`xmask.apps.bench`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xmask.cli import EXIT_OK, EXIT_SKIPPED
from xmask.cli._args import (
    BACKEND_CHOICES,
    MASK_GRID_HELP,
    MASK_GRIDS,
    ROOT_DEFAULT,
    add_device_option,
    add_model_options,
    add_root_option,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask bench``."""
    parser = sub.add_parser(
        "bench",
        help="segmentation seconds per image by density on ShanghaiTech A, xmask vs baselines",
        description="Time xmask (image in → count + label map out) and the FastSAM / SAM "
        "baselines, all given the same ground-truth heads, on the first K ShanghaiTech A test "
        "images of each density bin; report seconds per image and per bin, the slowest bin "
        "over the fastest (with its spread over the --repeat calls), xmask's post-network "
        "share and the peak resident memory. xmask runs the shipped model unless "
        "--model names another; the baselines have random weights (compute time does not "
        "depend on weights); a baseline whose optional extra is not installed is noted and not "
        f"run. Exit code {EXIT_SKIPPED} when an image or a baseline failed.",
    )
    add_root_option(parser, f"ShanghaiTech folder (holding part_A; default: {ROOT_DEFAULT})")
    add_model_options(parser, threshold=False)
    parser.add_argument("--per-bin", type=int, default=2, metavar="K", help="images per bin")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="timed calls per image and method, the median reported (default 3)",
    )
    parser.add_argument(
        "--baselines",
        default="fastsam-x,fastsam-s,sam-vit-b",
        help="comma list of fastsam-x, fastsam-s, sam-vit-b ('' for none; default: all)",
    )
    parser.add_argument(
        "--bins",
        default="0,100,250,500,1000",
        metavar="EDGES",
        help="lower edges of the head-count bins, the last one open (default 0,100,250,500,1000)",
    )
    parser.add_argument("--split", default="test", help="ShanghaiTech A split (default test)")
    add_device_option(parser)
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="what runs xmask's network (as for xmask predict; default auto)",
    )
    parser.add_argument(
        "--mask-grid", type=int, choices=MASK_GRIDS, default=1, metavar="G", help=MASK_GRID_HELP
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    """``xmask bench``."""
    from xmask.apps.bench import BenchConfig, parse_baselines, parse_edges, run_bench
    from xmask.apps.bench_report import format_report

    cfg = BenchConfig(
        root=None if args.root is None else Path(args.root).expanduser(),
        checkpoint=args.model,
        which=args.which,
        per_bin=args.per_bin,
        repeat=args.repeat,
        baselines=parse_baselines(args.baselines),
        device=args.device,
        edges=parse_edges(args.bins),
        split=args.split,
        backend=args.backend,
        mask_grid=args.mask_grid,
    )
    report = run_bench(cfg)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    skipped = report["skipped"] or any(
        info["status"] not in ("ok", "unavailable") for info in report["baselines"].values()
    )
    return EXIT_SKIPPED if skipped else EXIT_OK
