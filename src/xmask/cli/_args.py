"""Options several sub-commands share, declared once: which model, which network, the count
threshold, the device."""

from __future__ import annotations

import argparse
import math

MODEL_HELP = (
    "a model name (`xmask model list`), a model folder, or a training run (its folder, "
    "checkpoints/ or best/, or a .safetensors file in it)"
)
RUN_HELP = "a training run: its folder, checkpoints/ or best/, or a step-N.safetensors file in it"
SCALE_CHOICES = ("auto", "off", "shrink", "adaptive")
"""``--scale``: :data:`xmask.inference.scale.SCALE_OPTIONS`, spelled here so that parsing options
does not import torch (a test checks that they agree)."""
BACKEND_CHOICES = ("auto", "torch", "onnx", "onnx-int8")
"""``--backend``: ``auto`` and :data:`xmask.inference.predictor.BACKENDS`, spelled here for the
same reason."""
BACKEND_HELP = (
    "what runs the network: auto (default: onnx-int8 on a CPU when the model has an int8 "
    "graph, as the shipped one does, else torch), torch, onnx (onnxruntime: the model folder's "
    "model.onnx, else the network exported in memory) or onnx-int8 (its int8 copy: xmask model "
    "export --int8; counts measured in the README); counts, points and masks are decoded the "
    "same way"
)
MASK_GRIDS = (1, 2, 4)
"""``--mask-grid``: :data:`xmask.segment.grid.GRIDS`, spelled here for the same reason."""
MASK_GRID_HELP = (
    "segment on blocks of this many pixels a side: 1 (default, every pixel), 2 or 4 (about "
    "4x or 16x less work after the network, coarser mask edges; README, Masks on a coarser "
    "grid)"
)
THRESHOLD_HELP = (
    "count cells with a logit above this; auto (default): the model's own threshold (a model "
    "folder's, or the one `xmask calibrate` or the end of training stored for a run's weights), "
    "else 0"
)


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    default: str = "the model shipped with xmask",
    runs_only: bool = False,
    required: bool = False,
    threshold: bool = True,
    which: tuple[str, ...] = ("teacher", "student"),
) -> None:
    """``--model`` (alias ``--checkpoint``), ``--which``, and optionally ``--threshold``.

    Args:
        default: what no ``--model`` means, for the help text.
        runs_only: the command takes a training run, not a model folder.
        required: ``--model`` must be given.
        threshold: add ``--threshold``.
        which: the networks ``--which`` may name (the first is the default).
    """
    parser.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        metavar="MODEL",
        required=required,
        help=(RUN_HELP if runs_only else MODEL_HELP)
        + ("" if required else f"; default: {default}"),
    )
    add_which_option(parser, which)
    if threshold:
        rule = parser.add_mutually_exclusive_group()
        rule.add_argument("--threshold", default="auto", metavar="LOGIT", help=THRESHOLD_HELP)
        rule.add_argument(
            "--conf",
            dest="threshold",
            type=probability_logit,
            metavar="P",
            help="the same as a probability in (0, 1): count cells whose score (the "
            "probability in the outputs) is above P; --conf P = --threshold log(P / (1 - P))",
        )
        parser.add_argument(
            "--scale",
            choices=SCALE_CHOICES,
            default="auto",
            help="how the network input is sized: auto (default): the model's own rule; off: "
            "the image as it is, one pass; shrink: longer side at most 1024 px, one pass; "
            "adaptive: shrink, then enlarge dense crowds (docs/accuracy.md)",
        )
        parser.add_argument(
            "--locate",
            type=locate_factor,
            metavar="FACTOR",
            help="place the heads on a further pass FACTOR times larger (e.g. 1.25; one more "
            "network pass of FACTOR² the pixels): the count stays the scale rule's, its heads "
            "are the highest cells of that pass; 0: no such pass; default: the model's own "
            "(docs/locating.md)",
        )


def locate_factor(text: str) -> float:
    """``--locate FACTOR``: 0 (off) or a factor above 1."""
    try:
        factor = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if factor != 0.0 and not 1.0 < factor <= 4.0:
        raise argparse.ArgumentTypeError(f"0 (off) or a factor in (1, 4], got {text}")
    return factor


def probability_logit(text: str) -> str:
    """``--conf P`` → the logit ``log(P / (1 − P))`` that ``--threshold`` takes, as text."""
    try:
        p = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from err
    if not 0.0 < p < 1.0:
        raise argparse.ArgumentTypeError(f"a probability strictly between 0 and 1, got {text}")
    return repr(math.log(p / (1.0 - p)))


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N"
    )


def add_which_option(
    parser: argparse.ArgumentParser, which: tuple[str, ...] = ("teacher", "student")
) -> None:
    """``--which``: the network of a training run (the first of ``which`` by default)."""
    parser.add_argument(
        "--which",
        choices=which,
        default=which[0],
        help="the network of a training run (a model folder holds one)",
    )


ROOT_DEFAULT = "the config file's entry for the dataset, or $XMASK_DATA/FOLDER (README, Data)"
ROOT_HELP = f"dataset folder (default: {ROOT_DEFAULT})"


def add_root_option(parser: argparse.ArgumentParser, help: str = ROOT_HELP) -> None:
    """``--root``, optional: :func:`xmask.data.locations.dataset_root` finds a default."""
    parser.add_argument("--root", help=help)


def add_image_limit_option(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels``: decode images larger than Pillow's decompression-bomb limit."""
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="decode images of up to N pixels (default 89,478,485, Pillow's guard against "
        "decompression bombs): e.g. 120000000 for a 108 MP photo or a 30000x3000 panorama",
    )
