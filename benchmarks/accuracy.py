"""Counting accuracy that holds up on scenes the model has never seen: rerunnable error analysis.

``run`` evaluates one model on the ShanghaiTech A and B test sets as they are (``x1``) and
changed the ways user photos differ from them: greyscale (``grey``), rescaled ×0.5, ×2 and ×4
(``x0.5``, ``x2``, ``x4``; bicubic, points scaled with the image). One JSON line per image and
variant goes to ``WORK/LABEL/PART-VARIANT.jsonl`` (resumable: images already there are kept;
``--every N`` takes every N-th test image, for the costly ×4 variant):
true and predicted counts, the scale the predictor chose, the median nearest-neighbour distance
of the true heads (the image's head size), localisation at 4 and 8 px, per-head recall by head
size, and the lattice blocks (below). ``resolution`` counts SHB test ``IMG_1`` (and SHA test
``IMG_1``) resized to 1024, 2048, 3000 and 4000 px wide. ``gallery`` writes overlays (masks,
points, count) of a run's worst ``x1`` images. ``benchmarks/accuracy_report.py`` turns the runs
into ``docs/accuracy.md``.

Lattice detector
    The network input is cut into blocks of 32×32 px (8×8 stride-4 cells). A block is a
    *lattice* where at least 32 of its 64 cells are predicted heads (a regular grid of points)
    and it holds more than 1.25 times as many predicted as true heads. An image has a lattice
    when one of its blocks is one.

Localisation and head sizes are measured in pixels of the ``x1`` image (a ×2 variant's
distances are halved), so the variants compare. Examples::

    python benchmarks/accuracy.py run --label shipped --root ../shared/data/shanghaitech \\
        --work work/accuracy --scale off
    python benchmarks/accuracy.py resolution --label shipped --root ... --work work/accuracy
    python benchmarks/accuracy_report.py --work work/accuracy --before shipped --after new
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from xmask.data.readers import open_dataset
from xmask.errors import DataError
from xmask.inference.predictor import Predictor
from xmask.metrics.localisation import localisation_counts, match_points
from xmask.types import Sample

PARTS = {"sha": "A", "shb": "B"}
VARIANTS = ("x1", "grey", "x0.5", "x2", "x4")
FACTORS = {"x1": 1.0, "grey": 1.0, "x0.5": 0.5, "x2": 2.0, "x4": 4.0}
HEAD_EDGES = (0.0, 8.0, 16.0, 32.0)
"""Lower edges (px, ``x1`` image) of the head-size bins of per-head recall."""
BLOCK = 32
"""Side in pixels of the network input of a lattice block (8×8 cells)."""
RESOLUTION_WIDTHS = (1024, 2048, 3000, 4000)


def variant(sample: Sample, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The image (``H×W×3 uint8``) and its ``N×2`` ``(x, y)`` points for one variant."""
    image = Image.fromarray(sample.image)
    if name == "grey":
        return np.asarray(image.convert("L").convert("RGB")), sample.points
    factor = FACTORS[name]
    if factor == 1.0:
        return sample.image, sample.points
    w, h = image.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    scale = np.array([size[0] / w, size[1] / h], np.float32)
    return resized, (sample.points * scale).astype(np.float32)


def nearest(points: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest other point (``inf`` for a lone point)."""
    if len(points) < 2:
        return np.full(len(points), np.inf)
    return cKDTree(points).query(points, k=2)[0][:, 1]


def lattice_blocks(pred: np.ndarray, gt: np.ndarray, size: tuple[int, int]) -> int:
    """Lattice blocks (module docstring) of ``N×2`` predicted and ``M×2`` true points, both in
    pixels of a network input of ``size = (h, w)``."""
    if len(pred) < BLOCK:
        return 0
    shape = (-(-size[0] // BLOCK), -(-size[1] // BLOCK))

    def per_block(points: np.ndarray) -> np.ndarray:
        cells = np.minimum((points // BLOCK).astype(np.int64), [shape[1] - 1, shape[0] - 1])
        return np.bincount(cells[:, 1] * shape[1] + cells[:, 0], minlength=shape[0] * shape[1])

    p, g = per_block(pred), per_block(gt) if len(gt) else np.zeros(shape[0] * shape[1])
    return int(((p >= BLOCK) & (p > 1.25 * g)).sum())


def measure(predictor: Predictor, sample: Sample, name: str) -> dict[str, Any]:
    """One image's record for ``variant`` ``name`` (module docstring)."""
    image, gt = variant(sample, name)
    factor = FACTORS[name]
    start = time.perf_counter()
    predictor.set_image(image)
    prediction = predictor.predict(masks=False)
    seconds = time.perf_counter() - start
    scaled = predictor.features.scaled
    pred_x1, gt_x1 = prediction.points / factor, gt / factor
    matches = localisation_counts(pred_x1, gt_x1, (4.0, 8.0))
    _, found = match_points(pred_x1, gt_x1, 8.0)
    sizes = nearest(gt_x1)
    bins = np.searchsorted(HEAD_EDGES, sizes, side="right") - 1
    matched = np.zeros(len(gt_x1), bool)
    matched[found] = True
    return {
        "name": sample.name,
        "gt": len(gt),
        "pred": int(prediction.count),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "scale": float(scaled.scale),
        "passes": int(scaled.passes),
        "head_px": float(np.median(sizes)) if len(gt) > 1 else None,
        "tp4": matches[4.0].tp,
        "tp8": matches[8.0].tp,
        "heads_by_size": np.bincount(bins, minlength=len(HEAD_EDGES)).tolist(),
        "found_by_size": np.bincount(bins[matched], minlength=len(HEAD_EDGES)).tolist(),
        "lattice_blocks": lattice_blocks(
            scaled.to_input(prediction.points), scaled.to_input(gt), scaled.size
        ),
        "seconds": seconds,
    }


def done_names(path: Path) -> set[str]:
    """Names already recorded in a JSONL file (a truncated last line is dropped)."""
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            names.add(json.loads(line)["name"])
        except json.JSONDecodeError:
            continue
    return names


def load_predictor(args: argparse.Namespace) -> Predictor:
    torch.set_num_threads(args.threads)
    return Predictor.load(args.model, "cpu", args.which, args.threshold, args.scale)


def write_meta(folder: Path, args: argparse.Namespace, predictor: Predictor) -> None:
    meta = {
        "label": args.label,
        "model": str(predictor.source),
        "count_rule": predictor.count_rule.describe(),
        "scale": repr(predictor.scale),
        "threads": args.threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> None:
    folder = Path(args.work) / args.label
    folder.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(args)
    write_meta(folder, args, predictor)
    for part in args.parts.split(","):
        dataset = open_dataset(part, args.root, "test")
        for name in args.variants.split(","):
            path = folder / f"{part}-{name}.jsonl"
            done = done_names(path)
            names = dataset.names[:: args.every]
            todo = [dataset.names.index(n) for n in names if n not in done]
            with path.open("a", encoding="utf-8") as out:
                for index in tqdm(todo, desc=f"{args.label} {part} {name}", unit="img"):
                    try:
                        sample = dataset[index]
                    except DataError as err:
                        print(f"skipped {dataset.names[index]}: {err}")
                        continue
                    out.write(json.dumps(measure(predictor, sample, name)) + "\n")
                    out.flush()


def resolution(args: argparse.Namespace) -> None:
    folder = Path(args.work) / args.label
    folder.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(args)
    rows = []
    for part in ("shb", "sha"):
        sample = open_dataset(part, args.root, "test", names=["IMG_1.jpg"])[0]
        image = Image.fromarray(sample.image)
        for width in RESOLUTION_WIDTHS:
            height = round(image.size[1] * width / image.size[0])
            resized = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
            start = time.perf_counter()
            predictor.set_image(resized)
            count = predictor.predict(masks=False).count
            rows.append(
                {
                    "part": part,
                    "width": width,
                    "height": height,
                    "gt": sample.count,
                    "pred": count,
                    "scale": predictor.features.scaled.scale,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(rows[-1])
    (folder / "resolution.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


def gallery(args: argparse.Namespace) -> None:
    folder = Path(args.work) / args.label
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(args)
    ranked = []
    for part in PARTS:
        path = folder / f"{part}-x1.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            ranked += [(abs(r["pred"] - r["gt"]) / max(r["gt"], 1), part, r) for r in rows]
    ranked.sort(key=lambda item: -item[0])
    for _, part, row in ranked[: args.worst]:
        sample = open_dataset(part, args.root, "test", names=[row["name"]])[0]
        overlay = predictor(sample.image).overlay()
        name = f"{part}-{Path(row['name']).stem}-true{row['gt']}-pred{row['pred']}.jpg"
        Image.fromarray(overlay).save(out / name, quality=90)
        print(out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("run", "resolution", "gallery"):
        one = sub.add_parser(command)
        one.add_argument("--label", required=True, help="name of this model's results")
        one.add_argument("--model", help="model name, folder or run (default: the shipped one)")
        one.add_argument("--which", default="teacher")
        one.add_argument("--threshold", default="auto")
        one.add_argument("--scale", default="auto", help="auto, off or adaptive")
        one.add_argument("--root", required=True, help="ShanghaiTech folder")
        one.add_argument("--work", required=True, help="results folder")
        one.add_argument("--threads", type=int, default=1)
        if command == "run":
            one.add_argument("--parts", default="shb,sha")
            one.add_argument("--variants", default=",".join(VARIANTS))
            one.add_argument("--every", type=int, default=1, help="every N-th test image only")
        if command == "gallery":
            one.add_argument("--out", required=True, help="folder for the overlays")
            one.add_argument("--worst", type=int, default=8)
    args = parser.parse_args()
    {"run": run, "resolution": resolution, "gallery": gallery}[args.command](args)


if __name__ == "__main__":
    main()
