"""``xmask train``: a training run from a recipe, with dotted overrides; resumable."""

from __future__ import annotations

import argparse
import logging

from xmask.cli import EXIT_OK

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask train``."""
    parser = sub.add_parser(
        "train",
        help="train the counter (Stage 1) or the mask head (Stage 2) from a recipe",
        description="Train from a YAML recipe (a file or a shipped name such as shb-40-cpu) "
        "with dotted overrides, e.g. `xmask train --config shb-40-cpu schedule.epochs=5`. "
        "The run folder is OUT/NAME (keys `out`, `name`). Multi-GPU: "
        "`torchrun --nproc_per_node N -m xmask train ...`.",
    )
    parser.add_argument(
        "--config",
        action="append",
        help="recipe file or shipped recipe name (default: built-in defaults); repeat to merge "
        "several in order, e.g. --config shb-40-cpu --config stage2-cpu",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run folder's latest checkpoint (starts fresh if it has none)",
    )
    parser.set_defaults(run=run_train)


def _add_file_log(path: str) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("xmask").addHandler(handler)
    return handler


def run_train(args: argparse.Namespace) -> int:
    """``xmask train``."""
    import torch

    from xmask.device import resolve_device
    from xmask.errors import XmaskError
    from xmask.kernels import set_threads as set_kernel_threads
    from xmask.train.checkpoint import CheckpointError
    from xmask.train.config import load_config
    from xmask.train.distributed import init_distributed, shutdown
    from xmask.train.run_folder import RunFolder
    from xmask.train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    run = RunFolder(cfg.run_dir)
    resume = args.resume and run.has_checkpoint()
    if run.has_checkpoint() and not args.resume:
        raise XmaskError(f"{run.root}: holds a checkpoint; pass --resume or set name=...")
    if resume:
        if not run.config_path.is_file():
            raise CheckpointError(run.config_path, "not found: the run folder is incomplete")
        cfg = load_config(run.config_path, args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        set_kernel_threads(cfg.threads)
    info = init_distributed(resolve_device(cfg.device).type)
    handler = None
    if info.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        handler = _add_file_log(str(run.log_path))
    try:
        state = Trainer(cfg, resume=resume, dist_info=info).fit()
    finally:
        if handler is not None:
            logging.getLogger("xmask").removeHandler(handler)
            handler.close()
        shutdown()
    if info.is_main:
        print(f"run {run.root}: {state.epoch} epochs, {state.step} steps")
    return EXIT_OK
