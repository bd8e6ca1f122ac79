"""``xmask train``: a training run from a recipe, with dotted overrides; resumable. With
``--pipeline RECIPE``: every stage in one folder (:mod:`xmask.train.pipeline`)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from xmask.cli import EXIT_OK

if TYPE_CHECKING:
    from xmask.device import DistInfo
    from xmask.train.config import TrainConfig

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask train``."""
    parser = sub.add_parser(
        "train",
        help="train the counter (Stage 1), the mask head (Stage 2), mask-constrained counting "
        "(Stage 3), or all of them in one pipeline",
        description="Train from a YAML recipe (a file or a shipped name such as shb-40-cpu) "
        "with dotted overrides, e.g. `xmask train --config shb-40-cpu schedule.epochs=5`. "
        "The run folder is OUT/NAME (keys `out`, `name`). `--pipeline RECIPE` runs Stage 1, "
        "annotation of the labeled images, Stage 2 and Stage 3 in one folder (rerun the same "
        "command to continue after an interruption). Multi-GPU (single stages): "
        "`torchrun --nproc_per_node N -m xmask train ...`.",
    )
    parser.add_argument(
        "--config",
        action="append",
        help="recipe file or shipped recipe name (default: built-in defaults); repeat to merge "
        "several in order, e.g. --config shb-40-cpu --config stage2-cpu",
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        metavar="RECIPE",
        help="run every stage of a pipeline recipe (e.g. shb-40-cpu-pipeline) in OUT/NAME; "
        "overrides apply to every stage, `stageN.KEY=VALUE` to stage N only; the same command "
        "again continues where it stopped and recomputes nothing already written",
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
    from xmask.errors import XmaskError
    from xmask.inference.checkpoint import CheckpointError
    from xmask.inference.run_folder import RunFolder
    from xmask.train.config import load_config

    if args.pipeline:
        if args.config or args.resume:
            raise XmaskError("--pipeline takes its recipe itself; drop --config and --resume")
        return _run_pipeline(args.pipeline, args.overrides)
    cfg = load_config(args.config, args.overrides)
    run = RunFolder(cfg.run_dir)
    resume = args.resume and run.has_checkpoint()
    if run.has_checkpoint() and not args.resume:
        raise XmaskError(f"{run.root}: holds a checkpoint; pass --resume or set name=...")
    if resume:
        if not run.config_path.is_file():
            raise CheckpointError(run.config_path, "not found: the run folder is incomplete")
        cfg = load_config(run.config_path, args.overrides)
    from xmask.device import init_distributed, resolve_device, shutdown

    info = init_distributed(resolve_device(cfg.device).type)
    try:
        train_config(cfg, resume, info)
    finally:
        shutdown()
    return EXIT_OK


def train_config(cfg: TrainConfig, resume: bool, info: DistInfo | None = None) -> float:
    """Train one run (threads, the run's log file, the trainer); returns the training-loop
    seconds this call spent."""
    import torch

    from xmask.device import DistInfo
    from xmask.inference.run_folder import RunFolder
    from xmask.train.trainer import Trainer

    info = info or DistInfo()
    run = RunFolder(cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    handler = None
    if info.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        handler = _add_file_log(str(run.log_path))
    try:
        trainer = Trainer(cfg, resume=resume, dist_info=info)
        before = trainer.state.seconds
        state = trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger("xmask").removeHandler(handler)
            handler.close()
    if info.is_main:
        print(f"run {run.root}: {state.epoch} epochs, {state.step} steps")
    return state.seconds - before


def _run_pipeline(specs: list[str], overrides: list[str]) -> int:
    import os

    from xmask.errors import XmaskError
    from xmask.train.pipeline import Pipeline

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise XmaskError("--pipeline runs in one process; under torchrun train stage by stage")
    pipeline = Pipeline(specs, overrides, train_config)
    pipeline.root.mkdir(parents=True, exist_ok=True)
    handler = _add_file_log(str(pipeline.root / "pipeline.log"))
    try:
        summary = pipeline.run()
    finally:
        logging.getLogger("xmask").removeHandler(handler)
        handler.close()
    parts = summary["parts"]
    for name, part in parts.items():
        if name.startswith("evaluate-"):
            print(f"{name}: MAE {part['mae']:.2f}, RMSE {part['rmse']:.2f}")
    print(json.dumps({k: v for k, v in summary.items() if k != "parts"}))
    return EXIT_OK
