"""Choose the segmentation constants on held-out training images (the paper's Fig. S1 search).

Every combination of ``λ`` (Eq. 11), ``τ_g`` (Eq. 12) and the head-sized prior ``size_prior``
(:func:`xmask.geometry.circles.head_sizes`) is scored on images the model never trained on
(``shanghaitech-val`` by default) against reference label maps of those images (an annotation
folder, e.g. ``xmask annotate --backend superpixel``): mean IoU and F1 at IoU 0.5 of the masks of
the model's own heads and of the reference's points. The network runs once per image; each
combination only re-segments (``Predictor.segment_config``). Never tune on test images.
Example::

    xmask annotate --dataset folder --root DATA --split train --names "$(grep -v '^#' \\
        src/xmask/data/splits/shanghaitech-val.txt | paste -sd,)" --out refs/val
    python benchmarks/mask_tuning.py --model M --root DATA --refs refs/val --out tuning.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from xmask.data.image_io import load_label_map
from xmask.data.readers import open_dataset
from xmask.data.splits import read_labeled_list
from xmask.inference.predictor import Predictor
from xmask.metrics.segmentation import SegmentationCounts, segmentation_counts


def grid(args: argparse.Namespace) -> list[tuple[float, float, float | None]]:
    """``(λ, τ_g, size_prior)`` combinations; ``size_prior`` 0 on the command line is None."""
    priors = [p if p > 0 else None for p in args.size_prior]
    return list(itertools.product(args.lam, args.tau_g, priors))


def tune(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, "cpu", args.which, "auto", args.scale)
    base = predictor.segment_config
    names = set(read_labeled_list(args.images))
    dataset = open_dataset(args.dataset, args.root, args.split)
    items = [item for item in dataset.items if item.name in names]
    if not items:
        raise SystemExit(f"none of the {len(names)} images of {args.images} is in {args.root}")
    combos = grid(args)
    own = {c: SegmentationCounts() for c in combos}
    given = {c: SegmentationCounts() for c in combos}
    for item in tqdm(items, desc="tune masks", unit="img"):
        sample = dataset.load(item)
        reference = load_label_map(Path(args.refs) / "masks" / f"{Path(item.name).stem}.png",
                                   sample.size)  # fmt: skip
        predictor.set_image(sample.image)
        for combo in combos:
            lam, tau_g, prior = combo
            predictor.segment_config = dataclasses.replace(
                base, lam=lam, tau_g=tau_g, size_prior=prior
            )
            own[combo] = own[combo] + segmentation_counts(reference, predictor.predict().labels)
            given[combo] = given[combo] + segmentation_counts(
                reference, predictor.segment(sample.points).labels
            )
    rows = [
        {
            "lam": lam,
            "tau_g": tau_g,
            "size_prior": prior,
            "predicted": own[(lam, tau_g, prior)].to_dict(),
            "given": given[(lam, tau_g, prior)].to_dict(),
        }
        for lam, tau_g, prior in combos
    ]
    rows.sort(key=lambda r: -(r["predicted"]["mean_iou"] + r["given"]["mean_iou"]))
    current = {"lam": base.lam, "tau_g": base.tau_g, "size_prior": base.size_prior}
    return {"model": str(args.model), "images": len(items), "current": current, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model name, folder or run (default: the shipped one)")
    parser.add_argument("--which", default="teacher")
    parser.add_argument("--scale", default="auto")
    parser.add_argument("--dataset", default="folder")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", default="shanghaitech-val", help="held-out image list")
    parser.add_argument("--refs", required=True, help="annotation folder of those images")
    parser.add_argument("--lam", type=float, nargs="+", default=[0.4, 0.8, 1.6])
    parser.add_argument("--tau-g", type=float, nargs="+", default=[0.8, 1.1, 1.4])
    parser.add_argument("--size-prior", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = tune(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['images']} held-out images; current {result['current']}")
    print("λ     τ_g   prior | predicted IoU  F1    | given IoU  F1")
    for r in result["rows"][:10]:
        p, g = r["predicted"], r["given"]
        print(
            f"{r['lam']:<5g} {r['tau_g']:<5g} {r['size_prior']!s:<5} | {p['mean_iou']:.3f}"
            f"          {p['f1']:.3f} | {g['mean_iou']:.3f}      {g['f1']:.3f}"
        )


if __name__ == "__main__":
    main()
