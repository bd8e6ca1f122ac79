"""``xmask annotate``: instance masks from head points; export / import for manual correction."""

from __future__ import annotations

import argparse
import json

from xmask import DISTRIBUTION
from xmask.cli import EXIT_OK, EXIT_SKIPPED
from xmask.cli._args import add_device_option, add_image_limit_option, add_root_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask annotate`` and its ``export`` / ``import`` sub-commands."""
    parser = sub.add_parser(
        "annotate",
        help="instance masks from head points (superpixel backend), COCO export / import",
        description="Write one instance mask per head point: DIR/masks/NAME.png (16-bit label "
        "map, k = k-th point), DIR/points/NAME.txt, DIR/annotations.json (COCO, RLE) and "
        "DIR/summary.json. A re-run skips finished images. `xmask annotate export` and "
        "`xmask annotate import` carry the masks to and from CVAT for manual correction.",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="FILE",
        help="instead of --dataset: image files, each with NAME.txt, NAME.json (xmask or "
        "LabelMe) or NAME.mat beside it or in points/, or an entry in its folder's points.csv, "
        "annotations.xml (CVAT) or annotations.json (COCO keypoints)",
    )
    parser.add_argument("--dataset", help="sha, shb, ucf, jhu or folder")
    add_root_option(parser)
    parser.add_argument("--split", default="train", help="train, test (jhu: also val)")
    parser.add_argument(
        "--backend",
        default="superpixel",
        help="superpixel (default, no SAM), sam (EDP-SAM), sam-point (point-only baseline), "
        "fastsam or fastsam-nnec (the paper's FastSAM baselines)",
    )
    parser.add_argument("--out", help="output folder DIR")
    parser.add_argument(
        "--names",
        metavar="A,B",
        help="only these images of the split (comma-separated file names or stems)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument(
        "--no-overlay",
        dest="overlays",
        action="store_false",
        help="no DIR/overlays/NAME.png previews (the image with its masks, points and count)",
    )
    add_image_limit_option(parser)
    sam = parser.add_argument_group(f"SAM backends (pip install '{DISTRIBUTION}[sam]')")
    sam.add_argument("--sam-checkpoint", help="local SAM checkpoint (e.g. sam_vit_b_01ec64.pth)")
    sam.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    sam.add_argument(
        "--sam-prompt",
        default="box",
        choices=("box", "mask", "points", "none"),
        help="how the superpixel is given to SAM (default: its bounding box)",
    )
    sam.add_argument("--sam-batch", type=int, default=64, help="prompts per decoder call")
    sam.add_argument(
        "--sam-large-image", default="tile", choices=("tile", "resize"), help="images > 1280 px"
    )
    sam.add_argument(
        "--sam-random-weights",
        action="store_true",
        help="no checkpoint: random weights (speed measurements only)",
    )
    add_device_option(sam)
    fast = parser.add_argument_group(f"FastSAM baselines (pip install '{DISTRIBUTION}[fastsam]')")
    fast.add_argument("--fastsam-weights", help="local FastSAM-x.pt / FastSAM-s.pt")
    fast.add_argument("--fastsam-arch", default="x", choices=("s", "x"))
    fast.add_argument(
        "--fastsam-random-weights", action="store_true", help="speed measurements only"
    )
    fast.add_argument(
        "--fastsam-trust-pickle",
        action="store_true",
        help="allow a full unpickle of the weights file (runs code from the file)",
    )
    parser.set_defaults(run=run_annotate)
    tools = parser.add_subparsers(dest="annotate_command", metavar="{export,import}")
    export = tools.add_parser(
        "export", help="COCO file (RLE masks, head keypoints) of DIR for CVAT"
    )
    export.add_argument("--dataset", required=True, help="dataset the masks were made for")
    add_root_option(export)
    export.add_argument("--split", default="train")
    export.add_argument("--dir", required=True, help="annotation folder DIR")
    export.add_argument("--out", required=True, help="COCO JSON file to write")
    export.set_defaults(run=run_export)
    importer = tools.add_parser("import", help="corrected COCO file → DIR/masks, DIR/points")
    importer.add_argument("--coco", required=True, help="corrected COCO JSON file")
    importer.add_argument("--out", required=True, help="annotation folder DIR to write")
    importer.add_argument(
        "--overlap",
        choices=("nearest", "error"),
        default="nearest",
        help="pixels claimed by two heads: nearest head point wins, or refuse the file",
    )
    importer.set_defaults(run=run_import)


def run_annotate(args: argparse.Namespace) -> int:
    """``xmask annotate``."""
    from xmask.annotate.pipeline import annotate_dataset
    from xmask.data.files import check_out_folder
    from xmask.data.image_files import ImageFiles, pick_images
    from xmask.data.readers import open_dataset
    from xmask.errors import UsageError

    if args.out is None:
        raise UsageError("xmask annotate needs --out")
    check_out_folder(args.out)
    if (args.dataset is None) == (args.images is None):
        raise UsageError("xmask annotate needs either --dataset or --images")
    if args.images:
        dataset = ImageFiles(args.images)
    else:
        dataset = open_dataset(args.dataset, args.root, args.split)
    names = [name.strip() for name in args.names.split(",")] if args.names else None
    summary = annotate_dataset(
        pick_images(dataset, names, args.limit), args.out, args.backend,
        sam=_sam_config(args), fastsam=_fastsam_config(args), overlays=args.overlays,
    )  # fmt: skip
    print(
        f"{summary.images} images annotated ({summary.already_done} already done), "
        f"{summary.heads:,} heads, {summary.empty_masks} empty masks, "
        f"{summary.fallback_masks} fallback masks, {summary.seconds:.1f} s; "
        f"{len(summary.skipped)} skipped → {args.out}"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK


def _sam_config(args: argparse.Namespace) -> object | None:
    """The SAM settings of the command line, or None for a backend without SAM."""
    if not args.backend.startswith("sam"):
        return None
    from xmask.annotate.sam_model import SamConfig
    from xmask.errors import UsageError

    if args.sam_checkpoint is None and not args.sam_random_weights:
        raise UsageError(
            f"--backend {args.backend} needs --sam-checkpoint PATH (or --sam-random-weights)"
        )
    return SamConfig(
        checkpoint=args.sam_checkpoint,
        model_type=args.sam_model,
        superpixel_prompt=args.sam_prompt,
        batch_size=args.sam_batch,
        large_image=args.sam_large_image,
        device=args.device,
    )


def _fastsam_config(args: argparse.Namespace) -> object | None:
    """The FastSAM settings of the command line, or None for another backend."""
    if not args.backend.startswith("fastsam"):
        return None
    from xmask.annotate.fastsam_model import FastSamConfig
    from xmask.errors import UsageError

    if args.fastsam_weights is None and not args.fastsam_random_weights:
        raise UsageError(
            "--backend fastsam needs --fastsam-weights PATH (or --fastsam-random-weights)"
        )
    return FastSamConfig(
        weights=args.fastsam_weights,
        arch=args.fastsam_arch,
        trust_pickle=args.fastsam_trust_pickle,
        device=args.device,
    )


def run_export(args: argparse.Namespace) -> int:
    """``xmask annotate export``."""
    from xmask.annotate.coco import write_coco
    from xmask.annotate.pipeline import folder_to_coco
    from xmask.data.readers import open_dataset

    coco = folder_to_coco(open_dataset(args.dataset, args.root, args.split), args.dir)
    write_coco(args.out, coco)
    print(f"{len(coco['images'])} images, {len(coco['annotations']):,} heads → {args.out}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    """``xmask annotate import``."""
    from xmask.annotate.pipeline import import_coco

    heads, images = import_coco(args.coco, args.out, overlap=args.overlap)
    print(json.dumps({"images": images, "heads": heads, "out": str(args.out)}))
    return EXIT_OK
