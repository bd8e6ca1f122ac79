"""Mask quality before and after a change: rerunnable, written to ``docs/masks.md``.

``run`` scores one model on the ShanghaiTech A and B test sets against reference label maps (an
annotation folder per part, e.g. ``xmask annotate --backend superpixel``): mean IoU and F1 at
IoU 0.5 (:mod:`xmask.metrics.segmentation`) for the model's own heads (``predicted``) and for the
reference's points (``given``); localisation precision / recall / F1 of the predicted points at
2, 4 and 8 px; and the share of masks that are one 4-connected region holding their point.
``synthetic`` does the same on synthetic crowds with exact masks (:mod:`xmask.data.synthetic`;
half of them in perspective), beside the annotation backends that need no weights (a disc and
the NNEC circle per point). ``regions`` needs no reference: the share of the model's own masks
that are one region holding their point, per part. Results go to
``WORK/LABEL/masks-PART.json`` (``regions-PART.json``); ``report`` writes the document from two
labels. Examples::

    xmask annotate --dataset sha --root DATA --split test --backend superpixel --out refs/sha
    python benchmarks/masks.py run --label before --model M --connected off --scale off \\
        --root DATA --refs-sha refs/sha --refs-shb refs/shb --work work/masks
    python benchmarks/masks.py synthetic --label before --model M --work work/masks
    python benchmarks/masks.py regions --label locate --locate 1.25 --root DATA --work work/masks
    python benchmarks/masks.py run --label grid4 --mask-grid 4 --root DATA --refs-sha refs/sha \
        --refs-shb refs/shb --work work/masks
    python benchmarks/masks.py report --work work/masks --before before --after after \\
        --describe "before=the model of 2026-11-27" "after=with the offset head"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from xmask.data.image_io import load_label_map
from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError
from xmask.geometry.circles import circle_pixels, nnec_radii
from xmask.geometry.points import pixel_of
from xmask.inference.predictor import Predictor
from xmask.metrics.localisation import MISS_CAUSES, localisation_counts, miss_causes
from xmask.metrics.segmentation import SegmentationCounts, segmentation_counts
from xmask.types import Sample

SIGMAS = (2.0, 4.0, 8.0)
FOUR = ndimage.generate_binary_structure(2, 1)


def connected_share(labels: np.ndarray, points: np.ndarray) -> tuple[int, int]:
    """``(masks that are one 4-connected region holding their point, masks)``."""
    good = 0
    cells = pixel_of(points, labels.shape)
    objects = ndimage.find_objects(labels, max_label=len(points))
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(labels[box] == k, structure=FOUR)
        row, col = cells[k - 1, 1] - box[0].start, cells[k - 1, 0] - box[1].start
        inside = 0 <= row < pieces.shape[0] and 0 <= col < pieces.shape[1]
        good += int(count == 1 and inside and pieces[row, col] == 1)
    return good, len(points)


class Totals:
    """Sums over images."""

    def __init__(self) -> None:
        self.predicted, self.given = SegmentationCounts(), SegmentationCounts()
        self.loc = {s: [0, 0, 0] for s in SIGMAS}
        self.connected = [0, 0]
        self.misses = dict.fromkeys(MISS_CAUSES, 0)
        self.images = 0

    def add(self, reference: np.ndarray, sample: Sample, own: Any, given: Any) -> None:
        self.predicted = self.predicted + segmentation_counts(reference, own.labels)
        self.given = self.given + segmentation_counts(reference, given.labels)
        for sigma, counts in localisation_counts(own.points, sample.points, SIGMAS).items():
            tp, fp, fn = self.loc[sigma]
            self.loc[sigma] = [tp + counts.tp, fp + counts.fp, fn + counts.fn]
        for cause, count in miss_causes(own.points, sample.points).items():
            self.misses[cause] += count
        good, total = connected_share(own.labels, own.points)
        self.connected = [self.connected[0] + good, self.connected[1] + total]
        self.images += 1

    def to_dict(self) -> dict[str, Any]:
        loc = {}
        for sigma, (tp, fp, fn) in self.loc.items():
            p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            loc[f"{sigma:g}"] = {
                "precision": p,
                "recall": r,
                "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            }
        return {
            "images": self.images,
            "predicted": self.predicted.to_dict(),
            "given": self.given.to_dict(),
            "localisation": loc,
            "misses_4px": self.misses,
            "connected": self.connected[0] / max(self.connected[1], 1),
            "masks": self.connected[1],
        }


def load_predictor(args: argparse.Namespace) -> Predictor:
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(
        args.model, "cpu", args.which, "auto", args.scale, locate=args.locate,
        mask_grid=args.mask_grid,
    )  # fmt: skip
    if args.connected == "off":
        predictor.segment_config = dataclasses.replace(predictor.segment_config, connected=False)
    return predictor


def write(folder: Path, name: str, content: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def regions(args: argparse.Namespace) -> None:
    predictor = load_predictor(args)
    folder = Path(args.work) / args.label
    for part in args.parts.split(","):
        dataset = open_dataset(part, args.root, "test")
        good = total = 0
        broken = []
        for item in tqdm(dataset.items[: args.limit], desc=f"{args.label} {part}", unit="img"):
            try:
                sample = dataset.load(item)
            except DataError as err:
                print(f"skipped {item.name}: {err}")
                continue
            own = predictor(sample.image)
            one, masks = connected_share(own.labels, own.points)
            good, total = good + one, total + masks
            broken += [item.name] if one < masks else []
        share = {"images": len(dataset.items[: args.limit]), "masks": total, "one_region": good}
        write(folder, f"regions-{part}.json", share | {"images_with_broken_masks": broken})
        print(part, share)


def run(args: argparse.Namespace) -> None:
    predictor = load_predictor(args)
    folder = Path(args.work) / args.label
    for part, refs in (("sha", args.refs_sha), ("shb", args.refs_shb)):
        if refs is None:
            continue
        dataset = open_dataset(part, args.root, "test")
        totals = Totals()
        for item in tqdm(dataset.items[: args.limit], desc=f"{args.label} {part}", unit="img"):
            try:
                sample = dataset.load(item)
                reference = load_label_map(Path(refs) / "masks" / f"{Path(item.name).stem}.png",
                                           sample.size)  # fmt: skip
            except DataError as err:
                print(f"skipped {item.name}: {err}")
                continue
            own, given = predictor.predict_and_segment_points(sample.image, sample.points)
            totals.add(reference, sample, own, given)
        write(folder, f"masks-{part}.json", {"model": str(predictor.source)} | totals.to_dict())


def baseline_labels(sample: Sample, fraction: float) -> np.ndarray:
    """A mask per point that needs no weights: the disc of ``fraction`` times its NNEC radius
    (1: the whole circle), overlaps to the nearest point."""
    radii = fraction * nnec_radii(sample.points, sample.size, duplicates="distinct")
    pixels = circle_pixels(sample.points, radii, sample.size)
    labels = np.zeros(sample.size[0] * sample.size[1], np.int64)
    order = np.argsort(-pixels.dist2.numpy(), kind="stable")
    labels[pixels.flat.numpy()[order]] = pixels.point.numpy()[order] + 1
    return labels.reshape(sample.size).astype(np.int32)


def synthetic(args: argparse.Namespace) -> None:
    predictor = load_predictor(args)
    totals = Totals()
    circle = {"disc-0.5": SegmentationCounts(), "circle": SegmentationCounts()}
    for seed in tqdm(range(args.crowds), desc=f"{args.label} synthetic", unit="img"):
        crowd = make_crowd(384, 512, 60 + 40 * seed, perspective=seed % 2 == 1, seed=seed)
        own, given = predictor.predict_and_segment_points(crowd.image, crowd.points)
        totals.add(crowd.labels, crowd, own, given)
        for name, fraction in (("disc-0.5", 0.5), ("circle", 1.0)):
            circle[name] = circle[name] + segmentation_counts(
                crowd.labels, baseline_labels(crowd, fraction)
            )
    content = {"model": str(predictor.source), "crowds": args.crowds} | totals.to_dict()
    content["baselines"] = {name: counts.to_dict() for name, counts in circle.items()}
    write(Path(args.work) / args.label, "masks-synthetic.json", content)


def table(work: Path, labels: list[str]) -> list[str]:
    lines = [
        "| model | data | images | predicted: mean IoU | F1@0.5 | given points: mean IoU "
        "| F1@0.5 | loc. F1 @2 / 4 / 8 px | one region |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for label in labels:
        for part, name in (("sha", "ShanghaiTech A test"), ("shb", "ShanghaiTech B test"),
                           ("synthetic", "synthetic crowds")):  # fmt: skip
            path = work / label / f"masks-{part}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text(encoding="utf-8"))
            loc = " / ".join(f"{r['localisation'][s]['f1']:.3f}" for s in ("2", "4", "8"))
            lines.append(
                f"| {label} | {name} | {r['images']} | {r['predicted']['mean_iou']:.3f} "
                f"| {r['predicted']['f1']:.3f} | {r['given']['mean_iou']:.3f} "
                f"| {r['given']['f1']:.3f} | {loc} | {r['connected'] * 100:.1f} % |"
            )
    return lines


def misses_table(work: Path, labels: list[str]) -> list[str]:
    """Why points are unmatched at 4 px, as shares of the true heads (FN) and of the
    predictions (FP)."""
    lines = [
        "| model | data | heads unmatched: taken / off / missed | predictions unmatched: "
        "double / displaced / spurious |",
        "|---|---|---|---|",
    ]
    for label in labels:
        for part in ("sha", "shb", "synthetic"):
            path = work / label / f"masks-{part}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text(encoding="utf-8"))
            if "misses_4px" not in r:
                continue
            m, heads, preds = r["misses_4px"], r["predicted"]["gt_instances"], r["masks"]
            fn = " / ".join(f"{m[k] / max(heads, 1):.1%}" for k in ("taken", "off", "missed"))
            fp = " / ".join(
                f"{m[k] / max(preds, 1):.1%}" for k in ("double", "displaced", "spurious")
            )
            lines.append(f"| {label} | {part} | {fn} | {fp} |")
    return lines if len(lines) > 2 else []


def report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    labels = [args.before, args.after] if args.after else [args.before]
    models = []
    for label in labels:
        found = sorted((work / label).glob("masks-*.json"))
        if found:
            model = json.loads(found[0].read_text(encoding="utf-8"))["model"]
            note = dict(pair.split("=", 1) for pair in args.describe).get(label)
            models.append(f"- `{label}`: `{Path(model).name}`" + (f": {note}" if note else ""))
    baselines = []
    synth = work / labels[-1] / "masks-synthetic.json"
    if synth.is_file():
        for name, r in json.loads(synth.read_text(encoding="utf-8"))["baselines"].items():
            baselines.append(f"| {name} | {r['mean_iou']:.3f} | {r['f1']:.3f} |")
    text = [
        "# Mask quality, before and after",
        "",
        f"Generated by `benchmarks/masks.py report` ({datetime.now(timezone.utc):%Y-%m-%d}) "
        "from its `run` and `synthetic` results; rerun them to refresh it. Reference masks: the "
        "superpixel annotation of each test set (`xmask annotate --backend superpixel`); "
        "synthetic crowds carry their exact masks. *Predicted*: the model's own heads, "
        "matched one to one to the reference instances (Hungarian on IoU; mean IoU = Σ matched "
        "IoU / reference instances). *Given points*: the masks the model makes for the "
        "reference's own points. *One region*: masks that are one 4-connected region holding "
        "their point.",
        "",
        *models,
        "",
        *table(work, labels),
        "",
    ]
    misses = misses_table(work, labels)
    if misses:
        text += ["Why points miss at 4 px (`xmask.metrics.localisation.miss_causes`): a true head "
                 "is *taken* (a point within 4 px went to another head), *off* (the nearest "
                 "point is 4–8 px away) or *missed* (none within 8 px); a prediction is a "
                 "*double* (a second point on a matched head), *displaced* (4–8 px from the "
                 "nearest head) or *spurious*.", "", *misses, ""]  # fmt: skip
    if args.tuning:
        tuning = json.loads(Path(args.tuning).read_text(encoding="utf-8"))
        text += [f"The segmentation constants, chosen on {tuning['images']} held-out training "
                 "images (`shanghaitech-val`) against their superpixel annotation with "
                 "`benchmarks/mask_tuning.py` (the paper's Fig. S1 search; never on test), "
                 f"model `{Path(tuning['model']).name}`, best first:", "",
                 "| λ | τ_g | head-sized prior | predicted: mean IoU | F1@0.5 | given: mean IoU "
                 "| F1@0.5 |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in tuning["rows"]:
            p, g = r["predicted"], r["given"]
            text.append(
                f"| {r['lam']:g} | {r['tau_g']:g} | {r['size_prior'] or 'none'} "
                f"| {p['mean_iou']:.3f} | {p['f1']:.3f} | {g['mean_iou']:.3f} | {g['f1']:.3f} |"
            )
        text.append("")
    if baselines:
        text += ["Baselines on the synthetic crowds (no weights: a disc of half the NNEC radius, "
                 "the whole NNEC circle; FastSAM + NNEC needs FastSAM weights, which cannot be "
                 "obtained here):", "", "| baseline | mean IoU | F1@0.5 |", "|---|---:|---:|",
                 *baselines, ""]  # fmt: skip
    Path(args.out).write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("run", "synthetic", "regions"):
        one = sub.add_parser(command)
        one.add_argument("--label", required=True)
        one.add_argument("--model")
        one.add_argument("--which", default="teacher")
        one.add_argument("--scale", default="auto")
        one.add_argument("--locate", type=float, help="a locating pass (docs/locating.md)")
        one.add_argument("--connected", choices=("on", "off"), default="on")
        one.add_argument("--mask-grid", type=int, default=1, help="xmask.segment.grid")
        one.add_argument("--work", required=True)
        one.add_argument("--threads", type=int, default=1)
        if command in ("run", "regions"):
            one.add_argument("--root", required=True)
            one.add_argument("--limit", type=int)
        if command == "run":
            one.add_argument("--refs-sha")
            one.add_argument("--refs-shb")
        elif command == "regions":
            one.add_argument("--parts", default="sha,shb")
        else:
            one.add_argument("--crowds", type=int, default=12)
    rep = sub.add_parser("report")
    rep.add_argument("--work", required=True)
    rep.add_argument("--before", required=True)
    rep.add_argument("--after")
    rep.add_argument("--out", default="docs/masks.md")
    rep.add_argument("--tuning", help="the JSON of benchmarks/mask_tuning.py")
    rep.add_argument("--describe", nargs="*", default=[], metavar="LABEL=TEXT", help="a line each")
    args = parser.parse_args()
    {"run": run, "synthetic": synthetic, "regions": regions, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
