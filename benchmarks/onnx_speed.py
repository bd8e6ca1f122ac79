"""Seconds per image of the torch and the onnx backend, and how far their results differ.

    python benchmarks/onnx_speed.py [--model NAME_OR_PATH] [--images DIR] [--count N]
                                    [--threads T]

One process, one :class:`~xmask.inference.predictor.Predictor` per backend (the onnx one on the
model folder's ``model.onnx``, else the network exported in memory), on the first ``N``
(default 10) images of ``--images`` (ShanghaiTech B test images are 1024×768; default:
synthetic 1024×768 crowds of 150 heads). Each image is predicted once by each backend,
alternating (so a change of the machine's load reaches both alike), after one warm-up image
each. Per backend: the median seconds per image in the network (``network_s``), after it
(``post_s``) and in all; and over all images, :func:`~xmask.inference.onnx_backend.parity`:
counts equal, the largest point shift and the least mean mask IoU. The load average before
and after (``os.getloadavg``) goes with the figures: on a shared machine they are only
comparable to each other.

Prints one JSON object; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from xmask.data.image_io import load_image
from xmask.data.synthetic import make_crowd
from xmask.inference.onnx_backend import parity
from xmask.inference.predictor import Predictor


def _images(folder: str | None, count: int) -> list[np.ndarray]:
    if folder is None:
        return [make_crowd(768, 1024, 150, seed=i).image for i in range(count)]
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    return [load_image(p).array for p in paths[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or folder (default: the shipped model)")
    parser.add_argument("--images", help="a folder of images (default: synthetic 1024×768)")
    parser.add_argument("--count", type=int, default=10, help="images timed per backend")
    parser.add_argument("--threads", type=int, help="torch (and so onnxruntime) threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    images = _images(args.images, args.count + 1)
    predictors = {b: Predictor.load(args.model, "cpu", backend=b) for b in ("torch", "onnx")}
    times: dict[str, dict[str, list[float]]] = {
        b: {"network_s": [], "post_s": []} for b in predictors
    }
    agreements = []
    for index, image in enumerate(images):
        results = {b: predictor(image) for b, predictor in predictors.items()}
        agreements.append(parity(results["torch"], results["onnx"]))
        if index == 0:
            continue  # warm-up
        for backend, result in results.items():
            times[backend]["network_s"].append(result.network_s)
            times[backend]["post_s"].append(result.post_s)
    report = {
        "images": args.count,
        "size": list(images[0].shape[:2]),
        "threads": torch.get_num_threads(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "cores": os.cpu_count(),
        "backends": {
            backend: {key: round(statistics.median(values), 3) for key, values in phases.items()}
            | {"seconds": round(statistics.median(map(sum, zip(*phases.values(), strict=True))), 3)}
            for backend, phases in times.items()
        },
        "parity": {
            "counts_equal": all(a.counts[0] == a.counts[1] for a in agreements),
            "max_point_shift": max(a.point_shift for a in agreements),
            "min_mean_iou": round(min(a.mean_iou for a in agreements), 5),
            "min_head_iou": round(
                min((float(a.mask_ious.min()) for a in agreements if len(a.mask_ious)), default=1),
                5,
            ),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
