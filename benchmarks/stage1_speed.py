"""Stage-1 speed on this machine: training throughput, evaluation time per image, and the
P2R loss's cost as points grow (it must grow with points + cells, not points × cells).

Run on a quiet machine: ``python benchmarks/stage1_speed.py [--recipe shb-40-cpu] [--json]``.
Prints one JSON object (numbers measured here, nothing assumed).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from xmask.data.augment import Augmenter, collate_pairs, collate_views
from xmask.data.synthetic import make_crowd
from xmask.losses.p2r import p2r_loss
from xmask.train.config import load_config
from xmask.train.distributed import DistInfo
from xmask.train.stages.base import run_step
from xmask.train.stages.p2r import MeanTeacherStep


def _median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def training_throughput(recipe: str, repeat: int) -> dict[str, float]:
    """Seconds per labeled-only step and per Mean Teacher step of the recipe's batch sizes,
    on synthetic 768×1024 crowds (the recipe's model, augmentation and loss)."""
    cfg = load_config(recipe)
    step = MeanTeacherStep(cfg, torch.device("cpu"), DistInfo())
    sample = make_crowd(768, 1024, 300, seed=0)
    augment = Augmenter(cfg.augment)
    gen = torch.Generator().manual_seed(0)
    b_l, b_u = cfg.schedule.batch_labeled, cfg.schedule.batch_unlabeled
    labeled = collate_views([augment.weak(sample, gen) for _ in range(b_l)])
    unlabeled = collate_pairs([augment(sample, gen) for _ in range(b_u)])
    sup = _median_seconds(lambda: run_step(step, labeled, None, 0.0), repeat)
    semi = _median_seconds(lambda: run_step(step, labeled, unlabeled, 1.0), repeat)
    data = _median_seconds(
        lambda: (
            [augment.weak(sample, gen) for _ in range(b_l)],
            [augment(sample, gen) for _ in range(b_u)],
        ),
        repeat,
    )
    return {
        "labeled_step_s": sup,
        "mean_teacher_step_s": semi,
        "augmentation_per_step_s": data,
        "labeled_images_per_s": b_l / sup,
        "images_per_s_mean_teacher": (b_l + b_u) / semi,
    }


def evaluation_time(recipe: str, repeat: int) -> float:
    """Seconds per 768×1024 image: forward pass and counting, batch 1."""
    cfg = load_config(recipe)
    from xmask.models.model import build_model

    model = build_model(cfg.model).eval()
    image = torch.rand(1, 3, 768, 1024)

    def run() -> int:
        with torch.inference_mode():
            return int((model(image).logits > 0).sum())

    return _median_seconds(run, repeat)


def loss_scaling(repeat: int) -> list[dict[str, float]]:
    """P2R loss (forward + backward) time for batch 8 of 64×64 cells as points grow."""
    rows = []
    rng = np.random.default_rng(0)
    for n in (10, 100, 1000, 4000):
        logits = torch.randn(8, 1, 64, 64, requires_grad=True)
        points = [torch.from_numpy(rng.uniform(0, 256, (n, 2)).astype(np.float32))] * 8

        def run(logits: torch.Tensor = logits, points: list = points) -> None:
            p2r_loss(logits, points).loss.backward()

        rows.append({"points_per_image": n, "seconds": _median_seconds(run, repeat)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="shb-40-cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "recipe": args.recipe,
        "threads": args.threads,
        "train": training_throughput(args.recipe, args.repeat),
        "eval_s_per_image_768x1024": evaluation_time(args.recipe, args.repeat),
        "p2r_loss_scaling": loss_scaling(args.repeat),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
