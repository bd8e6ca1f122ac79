"""``xmask model``: list, describe and export model folders
(:mod:`xmask.inference.model_folder`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from xmask.cli import EXIT_OK
from xmask.cli._args import add_which_option, locate_factor
from xmask.errors import UsageError

if TYPE_CHECKING:
    from xmask.segment.instances import SegmentConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask model`` and its sub-commands."""
    parser = sub.add_parser("model", help="list, describe and export model folders")
    model_sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    listing = model_sub.add_parser(
        "list",
        help="the models found by name (yours, then the shipped ones)",
        description="Models found by name: $XMASK_MODELS (default "
        "~/.local/share/xmask/models), then the models shipped with xmask.",
    )
    listing.set_defaults(run=run_list)
    info = model_sub.add_parser("info", help="print a model's model.json")
    info.add_argument("model", nargs="?", metavar="MODEL", help="name or folder (default: shipped)")
    info.set_defaults(run=run_info)
    export = model_sub.add_parser(
        "export",
        help="write a training run's network as a model folder (or copy one), optionally "
        "with its ONNX graph",
        description="Write the network of a training run (its final teacher by default) as a "
        "model folder: model.json (architecture, count threshold, training data and label "
        "fraction, metrics) and weights.safetensors; or copy a model folder (a path or a name, "
        "e.g. the shipped model) as it is. With --format onnx, also model.onnx beside the card "
        "(the network for onnxruntime, any image size; `xmask predict --backend onnx`), and "
        "with --int8 model.int8.onnx, the network quantised to int8 and calibrated on your "
        "images (--backend onnx-int8, which --backend auto runs on a CPU; exporting needs "
        "pip install 'xmask-crowd[onnx]'); DEST "
        "may then be SOURCE's own folder to add these files to it (not an installed model's). "
        "DEST is a folder path, or a plain name: the model is then registered in "
        "$XMASK_MODELS and usable as `--model NAME` (a name of the shipped model hides it).",
    )
    export.add_argument(
        "source",
        metavar="SOURCE",
        help="a training run (folder, checkpoints/ or best/, or a file in it), or a model "
        "folder or name",
    )
    export.add_argument("dest", metavar="DEST", help="model folder, or a name to register")
    export.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="safetensors (default): the model folder; onnx: also model.onnx "
        "(pip install 'xmask-crowd[onnx]')",
    )
    int8 = export.add_argument_group("int8")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="also model.int8.onnx: the network quantised to int8, calibrated on --calibration "
        "(`xmask predict` runs it on a CPU; check its counts: benchmarks/int8_accuracy.py)",
    )
    int8.add_argument(
        "--calibration",
        metavar="DIR",
        help="a folder of images like those the model will see (training images, frames of "
        "the camera); at most --calibration-images of them, evenly spaced by name",
    )
    int8.add_argument("--calibration-images", type=int, default=32, metavar="N", help="default 32")
    int8.add_argument(
        "--calibration-name",
        metavar="TEXT",
        help="what the calibration images are, for the card (default: the folder's name)",
    )
    runs = export.add_argument_group("training runs only")
    runs.add_argument("--description", help="one line for people")
    add_which_option(runs)
    runs.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    runs.add_argument(
        "--scale",
        choices=("adaptive", "shrink", "off"),
        help="the card's scale rule: adaptive (default; shrink to 1024 px, enlarge dense "
        "crowds), shrink (longer side at most 1024 px, one pass) or off (the image as it is, "
        "one pass); docs/accuracy.md",
    )
    runs.add_argument(
        "--locate",
        type=locate_factor,
        metavar="FACTOR",
        help="the card's locating pass: heads placed on a pass FACTOR times larger, the count "
        "unchanged (default: none; xmask predict --locate)",
    )
    runs.add_argument(
        "--segment",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="the card's segmentation constants instead of the defaults, e.g. lam=1.6 "
        "tau_g=1.1 size_prior=1.5 (keys: lam, tau_g, kernel, sigma, size_prior (none: off), "
        "connected (true/false); chosen with benchmarks/mask_tuning.py on held-out images)",
    )
    export.set_defaults(run=run_export)


def segment_settings(pairs: list[str]) -> SegmentConfig:
    """The inference :class:`SegmentConfig` with ``KEY=VALUE`` pairs applied.

    Raises:
        UsageError: an unknown key, or a value that is not a number (or ``none`` for
            ``size_prior``, ``true``/``false`` for ``connected``).
    """
    from xmask.segment.instances import INFERENCE

    parsers = {"lam": float, "tau_g": float, "kernel": int, "sigma": float}
    changes: dict[str, object] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            if key in parsers:
                changes[key] = parsers[key](text)
            elif key == "size_prior":
                changes[key] = None if text.lower() == "none" else float(text)
            elif key == "connected" and text.lower() in ("true", "false"):
                changes[key] = text.lower() == "true"
            else:
                raise ValueError
        except ValueError:
            keys = ", ".join([*parsers, "size_prior", "connected"])
            message = f"--segment {pair!r}: expected KEY=VALUE with a key of {keys}"
            raise UsageError(message) from None
    return dataclasses.replace(INFERENCE, **changes)


def run_list(args: argparse.Namespace) -> int:
    """``xmask model list``."""
    from xmask.inference.model_folder import DEFAULT_MODEL, read_model_card, registered_models

    models = registered_models()
    if not models:
        print("no models found")
    for name, folder in models.items():
        card = read_model_card(folder)
        mark = " (default)" if name == DEFAULT_MODEL else ""
        scores = ", ".join(
            f"{k} MAE {v['mae']:.2f} on {v.get('images', '?')} images"
            for k, v in card.metrics.items()
            if "mae" in v
        )
        print(f"{name}{mark}: {card.description or '-'}" + (f" [{scores}]" if scores else ""))
        print(f"    {folder}")
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    """``xmask model info``."""
    from xmask.inference.model_folder import CARD_FILE, read_model_card, resolve_model

    folder = resolve_model(args.model)
    read_model_card(folder)
    print(json.dumps(json.loads((folder / CARD_FILE).read_text("utf-8")), indent=2))
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """``xmask model export``: the options given (a run's defaults are
    :func:`~xmask.inference.loading.export_run`'s)."""
    from xmask.inference.loading import export_model
    from xmask.inference.model_folder import user_models_dir
    from xmask.inference.quantize import write_int8
    from xmask.inference.scale import ONE_PASS, resolve_scale

    dest = Path(args.dest).expanduser()
    if len(dest.parts) == 1 and not dest.exists():
        dest = user_models_dir() / dest
    options: dict[str, object] = {"which": args.which}
    if args.description is not None:
        options["description"] = args.description
    if args.half:
        options["dtype"] = "float16"
    if args.scale is not None or args.locate is not None:
        options["scale"] = resolve_scale(args.scale or "adaptive", ONE_PASS, args.locate)
    if args.segment:
        options["segment"] = segment_settings(args.segment)
    if args.int8 and not args.calibration:
        raise UsageError("--int8 needs --calibration DIR: images to calibrate it on")
    folder = export_model(args.source, dest, onnx=args.format == "onnx", **options)
    if args.int8:
        write_int8(folder, args.calibration, args.calibration_images, args.calibration_name)
    print(f"wrote {folder}")
    return EXIT_OK
