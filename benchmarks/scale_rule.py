"""Choose the scale rule and the count threshold on held-out training images (never test images).

For every held-out image (``--validation``, a list of training images the model never trained
on) and every variant (as it is, ×0.5 and ×2: the rule must hold across resolutions), the
network runs at every input size a candidate :class:`~xmask.inference.scale.ScaleRule` can
choose: the canonical pass for each ``canonical_side`` and the enlarged pass for each
``target_spacing`` and ``quantile`` (the enlarged pass is decided at logit 0, as calibration
does). Each network output is kept as its counts above every candidate logit threshold, so every
rule × threshold pair is then scored without running the network again. One count rule must
serve every resolution, so each scale rule gets one count rule fitted over the images of all
variants together (a single threshold, and two by density as
:func:`~xmask.inference.count_rule.fit_count_rule` fits them); its score is that pooled MAE, and
the MAE of each variant at the same count rule is reported beside it. The table of every rule
goes to ``--out`` (JSON) and the best rules are printed.

    python benchmarks/scale_rule.py --model RUN_OR_MODEL --dataset folder \\
        --root shanghaitech-folder --validation shanghaitech-val --out scale-rules.json

``--sides``, ``--targets`` and ``--quantiles`` narrow the search (the network runs only at the
sizes the remaining rules choose): e.g. ``--sides 1024 --targets none,10,14 --quantiles 0.25``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from xmask.data.readers import open_dataset
from xmask.data.splits import read_labeled_list
from xmask.inference.calibration import DEFAULT_CANDIDATES, counts_above
from xmask.inference.count_rule import DENSITY_PIXELS, CountRule, fit_count_rule
from xmask.inference.loading import load_inference_model
from xmask.inference.scale import ScaleRule, resize_tensor, scaled_size
from xmask.inference.tiling import image_tensor, predict_outputs
from xmask.models.count_head import decode_points
from xmask.models.fusion import inference_copy

CANONICAL = (None, 1024)
TARGETS = (None, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0)
QUANTILES = (0.1, 0.25, 0.5)
FACTORS = (1.0, 0.5, 2.0)


def rules(
    sides: tuple[int | None, ...] = CANONICAL,
    targets: tuple[float | None, ...] = TARGETS,
    quantiles: tuple[float, ...] = QUANTILES,
) -> list[ScaleRule]:
    """Every candidate rule (one per side without enlarging, ``target_spacing`` None)."""
    out = []
    for side, target in itertools.product(sides, targets):
        kept = (0.25,) if target is None else quantiles
        out += [ScaleRule(canonical_side=side, target_spacing=target, quantile=q) for q in kept]
    return out


def optional_numbers(text: str, kind: type) -> tuple:
    """``"none,10,14"`` → ``(None, 10, 14)`` (numbers of ``kind``; ``none``: None)."""
    return tuple(None if v.strip() == "none" else kind(v) for v in text.split(","))


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


class Cache:
    """Counts above every threshold, and the heads at logit 0, of one image per input size."""

    def __init__(self, network: torch.nn.Module, image: np.ndarray, thresholds: torch.Tensor):
        self.network, self.thresholds = network, thresholds
        self.full = image_tensor(image, "cpu")
        self.original = (int(image.shape[0]), int(image.shape[1]))
        self.outputs: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray]] = {}

    def at(self, size: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
        if size not in self.outputs:
            out, _ = predict_outputs(self.network, resize_tensor(self.full, size))
            logits = out.logits.cpu()
            points = decode_points(logits, 0.0)[0].points.numpy()
            self.outputs[size] = (counts_above(logits, self.thresholds), points)
        return self.outputs[size]

    def final_size(self, rule: ScaleRule) -> tuple[int, int]:
        first = rule.first_scale(self.original)
        size = scaled_size(self.original, first)
        enlarged = rule.enlarged_scale(self.at(size)[1], first)
        return size if enlarged is None else scaled_size(self.original, enlarged)


def apply(rule: CountRule, counts: torch.Tensor, pixels: torch.Tensor, cands: torch.Tensor):
    """Each image's count under ``rule`` from its ``N×K`` counts above the candidates."""
    index = {round(float(c), 4): k for k, c in enumerate(cands)}
    sparse = counts[:, index[round(rule.threshold, 4)]].double()
    if rule.split is None:
        return sparse
    dense = counts[:, index[round(float(rule.dense_threshold), 4)]].double()
    return torch.where(sparse * DENSITY_PIXELS / pixels > rule.split, dense, sparse)


def scores(rows: dict[float, tuple[list, list, list]], cands: torch.Tensor) -> dict:
    """The pooled count rules of one scale rule and the MAE of each variant under them."""
    f64 = torch.float64
    stack = {
        f: (torch.stack(c), torch.tensor(t, dtype=f64), torch.tensor(p, dtype=f64))
        for f, (c, t, p) in rows.items()
    }
    counts = torch.cat([c for c, _, _ in stack.values()])
    truth = torch.cat([t for _, t, _ in stack.values()])
    pixels = torch.cat([p for _, _, p in stack.values()])
    err = (counts.double() - truth[:, None]).abs().mean(dim=0)
    single = CountRule(float(cands[int(torch.argmin(err))]))
    two, _ = fit_count_rule(counts, truth, pixels, cands, min_images=10)
    out = {"single": single.describe(), "two_regimes": two.describe(), "variants": {}}
    for name, rule in (("single", single), ("two_regimes", two)):
        per = {
            str(f): float((apply(rule, c, p, cands) - t).abs().mean())
            for f, (c, t, p) in stack.items()
        }
        out["variants"][name] = per
        out[f"mae_{name}"] = float(np.mean(list(per.values())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--which", default="teacher")
    parser.add_argument("--dataset", default="folder")
    parser.add_argument("--root", required=True)
    parser.add_argument("--validation", required=True, help="held-out training images")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sides", default="none,1024", help="canonical sides to try (none: the image as it is)"
    )
    parser.add_argument(
        "--targets", default="none,8,10,12,14,16,20", help="target spacings (none: no enlarging)"
    )
    parser.add_argument("--quantiles", default="0.1,0.25,0.5")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_inference_model(args.model, torch.device("cpu"), args.which)
    network = inference_copy(loaded.model)
    names = read_labeled_list(args.validation)
    dataset = open_dataset(args.dataset, args.root, "train", names=names)
    cands = torch.tensor(DEFAULT_CANDIDATES, dtype=torch.float64)
    candidates = rules(
        optional_numbers(args.sides, int),
        optional_numbers(args.targets, float),
        tuple(float(q) for q in args.quantiles.split(",")),
    )
    per_rule = {i: {f: ([], [], []) for f in FACTORS} for i in range(len(candidates))}
    with torch.inference_mode():
        for index in tqdm(range(len(dataset)), desc="validation images", unit="img"):
            sample = dataset[index]
            for factor in FACTORS:
                cache = Cache(network, resized(sample.image, factor), cands.float())
                for i, rule in enumerate(candidates):
                    size = cache.final_size(rule)
                    counts, rows = per_rule[i][factor], cache.at(size)[0]
                    counts[0].append(rows)
                    counts[1].append(sample.count)
                    counts[2].append(size[0] * size[1])
    table = []
    for i, rule in enumerate(candidates):
        table.append({"rule": asdict(rule)} | scores(per_rule[i], cands))
    table.sort(key=lambda e: e["mae_single"])
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"{len(dataset)} images, {len(candidates)} rules, {time.perf_counter() - started:.0f} s")
    for entry in table[:10]:
        r, v = entry["rule"], entry["variants"]
        one = ", ".join(f"x{f} {m:.2f}" for f, m in v["single"].items())
        two = ", ".join(f"x{f} {m:.2f}" for f, m in v["two_regimes"].items())
        print(
            f"side {r['canonical_side']} target {r['target_spacing']} q {r['quantile']}: "
            f"{entry['mae_single']:.2f} at {entry['single']} ({one}); "
            f"{entry['mae_two_regimes']:.2f} at {entry['two_regimes']} ({two})"
        )


if __name__ == "__main__":
    main()
