"""Counts and speed of the torch, onnx and onnx-int8 backends of one model folder on one test set:
whether the int8 graph (``xmask model export ... --format onnx --int8``) keeps the counts.

    python benchmarks/int8_accuracy.py --model FOLDER --dataset shb \\
        --root ../shared/data/shanghaitech [--split test] [--limit N] [--threads T] [--json OUT]

Every image is counted by each backend in turn (so a change of the machine's load reaches all
alike), with the model folder's own count and scale rules, network only (``masks=False``).
Per backend: MAE, RMSE, bias, the MAE relative to the first backend's (torch), the median
network seconds per image, how many counts differ from the first backend's, the localisation
F1 of its points at 4 and 8 px (where a quantised offset head shows first), and, on the first
``--masks`` images, the masks: the first backend's heads segmented with each backend's
embedding, mean IoU of each head's mask against the first backend's. Prints one JSON object
(also written to ``--json``); nothing is asserted. The load average before and after goes with
the seconds: on a shared machine they are only comparable to each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xmask.data.image_files import pick_images
from xmask.data.readers import open_dataset
from xmask.errors import DataError
from xmask.inference.onnx_backend import parity
from xmask.inference.predictor import BACKENDS, Predictor
from xmask.metrics.localisation import MatchCounts, localisation_counts

SIGMAS = (4.0, 8.0)
"""Localisation thresholds in pixels."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder with model.int8.onnx")
    parser.add_argument("--dataset", default="shb", help="sha, shb, ucf, jhu or folder")
    parser.add_argument("--root", required=True, help="the dataset's folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--masks", type=int, default=20, help="images whose masks are compared")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    dataset = pick_images(open_dataset(args.dataset, args.root, args.split), limit=args.limit)
    backends = args.backends.split(",")
    predictors = {b: Predictor.load(args.model, "cpu", backend=b) for b in backends}
    errors: dict[str, list[int]] = {b: [] for b in backends}
    seconds: dict[str, list[float]] = {b: [] for b in backends}
    ious: dict[str, list[float]] = {b: [] for b in backends}
    located = {b: {s: MatchCounts() for s in SIGMAS} for b in backends}
    skipped = []
    start = time.perf_counter()
    for index in tqdm(range(len(dataset)), desc="images", unit="img"):
        try:
            sample = dataset[index]
        except DataError as err:
            skipped.append(f"{dataset.names[index]}: {err}")
            continue
        heads = reference = None
        for backend, predictor in predictors.items():
            features = predictor.set_image(sample.image)
            own = predictor.predict(masks=False)
            errors[backend].append(own.count - sample.count)
            for sigma, counts in localisation_counts(own.points, sample.points, SIGMAS).items():
                located[backend][sigma] += counts
            seconds[backend].append(features.network_s)
            if index < args.masks and predictor.has_masks:
                heads = own.points if heads is None else heads
                given = predictor.segment(heads)
                reference = given if reference is None else reference
                ious[backend].append(parity(reference, given).mean_iou)
    first = np.abs(errors[backends[0]]).mean() if errors[backends[0]] else float("nan")
    report = {
        "model": str(predictors[backends[0]].source),
        "dataset": f"{args.dataset} {args.split}",
        "images": len(errors[backends[0]]),
        "skipped": skipped,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - start, 1),
        "backends": {},
    }
    for backend in backends:
        err = np.asarray(errors[backend], dtype=np.float64)
        mae = float(np.abs(err).mean()) if len(err) else float("nan")
        report["backends"][backend] = {
            "mae": round(mae, 3),
            "rmse": round(float(np.sqrt((err**2).mean())), 3) if len(err) else None,
            "bias": round(float(err.mean()), 3) if len(err) else None,
            f"mae_vs_{backends[0]}": round(mae / first - 1.0, 4),
            "counts_differ": int((err != np.asarray(errors[backends[0]])).sum()),
            "network_s": round(statistics.median(seconds[backend]), 3) if len(err) else None,
            "mask_iou": round(float(np.mean(ious[backend])), 4) if ious[backend] else None,
        }
        for sigma, counts in located[backend].items():
            report["backends"][backend][f"f1_{sigma:g}px"] = round(counts.f1, 4)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
