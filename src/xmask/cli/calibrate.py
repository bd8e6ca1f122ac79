"""``xmask calibrate``: the count threshold of a trained model, from its labeled images."""

from __future__ import annotations

import argparse
import logging

from xmask.cli import EXIT_OK
from xmask.cli._args import add_device_option, add_model_options

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask calibrate``."""
    parser = sub.add_parser(
        "calibrate",
        help="choose the count threshold of a trained model on its training images",
        description="Run the model on every labeled training image of its run (or its "
        "held-out validation images; full images, batch 1) and store, beside the checkpoint, "
        "the logit threshold that minimises the count MAE there (-2 to 3 in steps of 0.05). "
        "`xmask evaluate` and `xmask model export` use it by default. "
        "Training does this at its end; use this command for older runs or other weights. "
        "--which both (the default) calibrates the teacher, and the student where the weights "
        "hold one (a best/ folder keeps the teacher only). "
        "Test images are never looked at.",
    )
    add_model_options(
        parser, runs_only=True, required=True, threshold=False, which=("both", "teacher", "student")
    )
    parser.add_argument(
        "--two-regimes",
        action="store_true",
        help="also try one threshold for sparse and one for dense images, split by the "
        "predicted heads per 10,000 px; kept only where it lowers the MAE on the labeled "
        "images (for models trained on very different densities, e.g. ShanghaiTech A + B)",
    )
    parser.add_argument(
        "--images",
        choices=("labeled", "validation"),
        default="labeled",
        help="the run's labeled training images (default) or its held-out validation list "
        "(data.validation: images it never trained on)",
    )
    parser.add_argument(
        "--scale",
        choices=("off", "shrink", "adaptive"),
        default="off",
        help="size the network input as a model exported with this scale rule will "
        "(docs/accuracy.md); off: the image as it is",
    )
    add_device_option(parser)
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """``xmask calibrate``."""
    from xmask.device import resolve_device
    from xmask.errors import XmaskError
    from xmask.inference.calibration import calibrate_weights, weights_location
    from xmask.inference.run_folder import run_networks
    from xmask.inference.scale import ONE_PASS, resolve_scale
    from xmask.train.data import labeled_training_images, validation_images
    from xmask.train.run_folder import load_trained_model

    folder, step = weights_location(args.model)
    if step is None:
        raise XmaskError(f"{args.model}: not a step-N.safetensors file; cannot tell its step")
    device = resolve_device(args.device)
    which = (args.which,)
    if args.which == "both":
        which = run_networks(args.model)
        if "student" not in which:
            print(f"student: none in {args.model} (a best/ folder keeps the teacher only)")
    samples = None
    for name in which:
        model, cfg = load_trained_model(args.model, device, which=name)
        if samples is None:
            chosen = {"labeled": labeled_training_images, "validation": validation_images}
            samples = chosen[args.images](cfg)
            if len(samples) == 0:
                raise XmaskError(f"{cfg.data.root}: the run's {args.images} list names no image")
        cal = calibrate_weights(
            model,
            samples,
            folder,
            step=step,
            which=name,
            device=device,
            two_regimes=args.two_regimes,
            scale=resolve_scale(args.scale, ONE_PASS),
        )
        print(
            f"{name}: count threshold {cal.rule.describe()} (step {step}, {cal.images} "
            f"{args.images} images, scale {args.scale}): MAE {cal.mae:.2f}, "
            f"{cal.mae_at_zero:.2f} at 0"
        )
    return EXIT_OK
