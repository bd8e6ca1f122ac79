"""Segmentation speed by crowd density on ShanghaiTech A test images (paper Fig. 8, Tab. 1).

Images
    The test split is divided into density bins by the number of head points in each image's
    ground-truth file: by default ``[0, 100)``, ``[100, 250)``, ``[250, 500)``, ``[500, 1000)``
    and ``[1000, ∞)`` (:data:`DEFAULT_EDGES`). The paper's Fig. 8 does not list its
    intervals; these edges spread ShanghaiTech A's 182 test images (33 to 3,139 heads) over
    five bins of 8 to 80 images and keep the 1000+ images, where per-head costs dominate,
    apart. From each bin the ``K`` images whose pixel count is nearest the split's median are
    taken (ties in name order; deterministic), so that bins differ in density, not in size:
    on ShanghaiTech A they are 1024 px wide images of 683 to 768 rows.

What is timed (wall clock per image; the image is already decoded to ``H×W×3 uint8``)
    ``xmask``: :meth:`xmask.predictor.Predictor.segment_points` with the image's ground-truth
    points as the heads: the network (logits and mask embedding), the count decoding, the
    smoothing of the embedding and Eq. 11–12 for every head, ending with the ``H×W`` label map
    on the host. Giving every method the same heads makes the per-head work equal (a randomly
    initialised counter predicts thousands of spurious heads; with ``--checkpoint`` the time
    with the model's own heads, ``Predictor(image)``, is reported too). The network's own
    count is reported as ``predicted_count``. The default model is EfficientNet-Lite0 with
    the mask head as the CPU recipes build it (``cpu-base`` + ``stage2-cpu``: 128-channel neck,
    64-channel mask head), random weights unless ``--checkpoint``: weights do
    not change the compute of a fixed set of heads.
    ``fastsam-x`` / ``fastsam-s``: FastSAM-x / -s (YOLOv8x-seg / YOLOv8s-seg, random weights,
    :mod:`xmask.annotate.fastsam`) on the image, then each ground-truth point answered from
    its candidates with NNEC clipping and circle fallback (the ``fastsam-nnec`` backend, the
    paper's FastSAM + NNEC, which like xmask gives every head a mask).
    ``sam-vit-b``: EDP-SAM (:mod:`xmask.annotate.edp_sam`, SAM ViT-B with random weights,
    box prompts from SLIC superpixels, one prompt per ground-truth point).
    Not timed: building the networks, reading files. Before timing, every method makes one
    untimed warm-up call on the first selected image; then each image is run ``--repeat``
    times (default 3) and the median call is reported (for xmask with its network /
    post-network split), which keeps one-off costs of a new image size out of the figures.

Other figures
    ``segmented_heads``: ground-truth heads that got a non-empty xmask mask. ``post_s``:
    xmask's time after the network (:class:`xmask.predictor.Prediction`);
    ``post_network_share`` is its sum over the sum of xmask's times (over all images, and over
    images with at least 1000 heads). ``peak_rss_mb``: ``ru_maxrss`` of the process (model
    building included; it never decreases), also recorded after each method.
"""

from __future__ import annotations

import gc
import itertools
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xmask.data.readers import CrowdDataset, open_dataset
from xmask.errors import DataError, UsageError, XmaskError
from xmask.predictor import Predictor
from xmask.types import Sample

log = logging.getLogger(__name__)

DEFAULT_EDGES: tuple[int, ...] = (0, 100, 250, 500, 1000)
"""Lower edges of the density bins (ground-truth heads); the last bin is open."""
DENSE = 1000
"""Images with at least this many heads make ``post_network_share_over_1000_heads``."""
BASELINES: tuple[str, ...] = ("fastsam-x", "fastsam-s", "sam-vit-b")
"""Baselines ``--baselines`` accepts."""

Backend = Callable[[np.ndarray, np.ndarray], Any]
"""``(image H×W×3 uint8, points N×2 (x, y)) → masks``: a baseline's whole per-image work."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        root: the ShanghaiTech folder (holding ``part_A``).
        checkpoint: a run with a mask head (its folder, ``checkpoints/``, ``best/`` or a
            ``.safetensors`` file); None: EfficientNet-Lite0 + mask head, random weights.
        which: the network of the checkpoint.
        per_bin: images per density bin.
        baselines: names from :data:`BASELINES`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        edges: lower bin edges, ascending from 0 (the last bin is open).
        split: the ShanghaiTech A split.
        progress: log one line per image and method.
        repeat: timed calls per image and method; the median one is reported.
    """

    root: Path
    checkpoint: str | None = None
    which: str = "teacher"
    per_bin: int = 2
    baselines: tuple[str, ...] = BASELINES
    device: str = "auto"
    edges: tuple[int, ...] = DEFAULT_EDGES
    split: str = "test"
    progress: bool = True
    repeat: int = 3


@dataclass
class Timed:
    """One method's seconds per selected image (None: not run on it), and its set-up."""

    name: str
    description: str
    seconds: list[float | None] = field(default_factory=list)
    load_s: float = 0.0
    rss_mb_after: float = 0.0
    status: str = "ok"
    reason: str = ""


def parse_baselines(text: str) -> tuple[str, ...]:
    """Comma-separated baseline names (empty: none).

    Raises:
        UsageError: an unknown name.
    """
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise UsageError(f"unknown baseline(s) {', '.join(unknown)}; available: {BASELINES}")
    return names


def parse_edges(text: str) -> tuple[int, ...]:
    """``"0,100,250"`` → lower bin edges, checked to be integers ascending from 0.

    Raises:
        UsageError: anything else.
    """
    try:
        edges = tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise UsageError(f"bins: comma-separated integers, got {text!r}") from err
    if edges[0] != 0 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise UsageError(f"bins: must ascend strictly from 0, got {text!r}")
    return edges


def bin_of(heads: int, edges: Sequence[int]) -> int:
    """Index of the bin ``[edges[i], edges[i+1])`` (the last one open) holding ``heads``."""
    return int(np.searchsorted(np.asarray(edges), heads, side="right")) - 1


def select_images(
    dataset: CrowdDataset, edges: Sequence[int], per_bin: int
) -> tuple[list[tuple[int, int]], list[dict[str, str]]]:
    """``per_bin`` images of each bin, by the number of points in their ground-truth files:
    those whose pixel count is nearest the split's median (dataset order breaks ties), so
    that the bins differ in density rather than in image size.

    Returns:
        ``(item index, ground-truth heads)`` of each chosen image, bin by bin; and the
        ``{"name", "problem"}`` of every image whose files cannot be read.
    """
    found: list[tuple[int, int, int]] = []
    skipped = []
    for index, item in enumerate(dataset.items):
        try:
            heads = len(dataset.read_points(item))
            width, height = _image_size(item.image)
        except DataError as err:
            log.warning("skipped %s: %s", item.name, err)
            skipped.append({"name": item.name, "problem": str(err)})
            continue
        found.append((index, heads, width * height))
    if not found:
        return [], skipped
    median = float(np.median([pixels for _, _, pixels in found]))
    chosen: list[list[tuple[int, int]]] = [[] for _ in edges]
    for index, heads, _ in sorted(found, key=lambda row: (abs(row[2] - median), row[0])):
        picks = chosen[bin_of(heads, edges)]
        if len(picks) < per_bin:
            picks.append((index, heads))
    return [pick for picks in chosen for pick in sorted(picks)], skipped


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(path, f"not a readable image ({err})") from err


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


DEFAULT_RECIPE = ("cpu-base", "stage2-cpu")
"""Recipes whose model the benchmark builds when no checkpoint is given."""


def build_predictor(cfg: BenchConfig) -> tuple[Predictor, str]:
    """xmask's predictor and its description (random EfficientNet-Lite0 + mask head unless
    ``cfg.checkpoint``).

    Raises:
        UsageError: a checkpoint whose model has no mask head.
    """
    if cfg.checkpoint is not None:
        predictor = Predictor.load(cfg.checkpoint, cfg.device, cfg.which)
        if not predictor.has_masks:
            raise UsageError(f"{cfg.checkpoint}: the model has no mask head")
        return predictor, f"{cfg.checkpoint} ({cfg.which})"
    from xmask.models.model import build_model
    from xmask.train.config import load_config

    recipe = load_config(list(DEFAULT_RECIPE), ["model.weights=null", "model.mask_head=true"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(recipe.model)
    described = (
        f"{recipe.model.backbone} + mask head ({' + '.join(DEFAULT_RECIPE)}), random weights"
    )
    return Predictor(model, cfg.device), described


def build_baseline(name: str, device: str) -> tuple[Backend, str]:
    """A baseline's per-image call and its description (random weights).

    Raises:
        UsageError: its optional dependency is missing, or an unknown name.
    """
    from xmask.annotate.pipeline import build_backend

    if name in ("fastsam-x", "fastsam-s"):
        from xmask.annotate.fastsam import FastSamConfig

        arch = "x" if name == "fastsam-x" else "s"
        fastsam = FastSamConfig(weights=None, arch=arch, device=device)
        run = build_backend("fastsam-nnec", fastsam=fastsam)
        return run, f"FastSAM-{arch} (YOLOv8{arch}-seg) random weights, fastsam-nnec matching"
    if name == "sam-vit-b":
        from xmask.annotate.edp_sam import SamConfig

        sam = SamConfig(checkpoint=None, model_type="vit_b", device=device)
        return build_backend("sam", sam=sam), "EDP-SAM, SAM ViT-B random weights, box prompts"
    raise UsageError(f"unknown baseline {name!r}; available: {BASELINES}")


def _time_calls(
    timed: Timed, run: Callable[[Sample], object], samples: Sequence[Sample], cfg: BenchConfig
) -> list[object]:
    """One untimed warm-up call on the first sample, then ``cfg.repeat`` timed calls per
    sample; keeps the median call's time and result (the result of the median call carries
    xmask's network / post-network split)."""
    run(samples[0])
    results = []
    for sample in samples:
        calls = []
        for _ in range(cfg.repeat):
            start = time.perf_counter()
            result = run(sample)
            calls.append((time.perf_counter() - start, result))
        seconds, result = sorted(calls, key=lambda call: call[0])[len(calls) // 2]
        results.append(result)
        timed.seconds.append(seconds)
        if cfg.progress:
            log.info(
                "%s %s: %d heads, %.3f s", timed.name, sample.name, sample.count, timed.seconds[-1]
            )
    timed.rss_mb_after = peak_rss_mb()
    return results


def _time_baseline(name: str, samples: Sequence[Sample], cfg: BenchConfig) -> Timed:
    """Build a baseline and time it on every sample."""
    start = time.perf_counter()
    try:
        backend, description = build_baseline(name, cfg.device)
    except (ImportError, XmaskError, OSError, KeyError) as err:
        log.warning("baseline %s skipped: %s", name, err)
        return Timed(name, "", [None] * len(samples), status="skipped", reason=str(err))
    timed = Timed(name, description, load_s=time.perf_counter() - start)
    _time_calls(timed, lambda s: backend(s.image, s.points), samples, cfg)
    return timed


def _time_baselines(samples: Sequence[Sample], cfg: BenchConfig) -> list[Timed]:
    """Every baseline of ``cfg`` in turn, each network freed before the next is built."""
    methods = []
    for name in cfg.baselines:
        methods.append(_time_baseline(name, samples, cfg))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return methods


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _share(post: Sequence[float], total: Sequence[float]) -> float | None:
    return float(sum(post) / sum(total)) if total and sum(total) > 0 else None


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark (module docstring) and return its JSON-ready report.

    Raises:
        DataError: no ShanghaiTech A split under ``cfg.root``, or no readable image chosen.
        UsageError: bad settings.
    """
    if cfg.per_bin < 1:
        raise UsageError(f"per_bin must be >= 1, got {cfg.per_bin}")
    if cfg.repeat < 1:
        raise UsageError(f"repeat must be >= 1, got {cfg.repeat}")
    dataset = open_dataset("sha", cfg.root, cfg.split)
    chosen, skipped = select_images(dataset, cfg.edges, cfg.per_bin)
    samples = []
    for index, _ in chosen:
        try:
            samples.append(dataset[index])
        except DataError as err:
            log.warning("skipped %s: %s", dataset.names[index], err)
            skipped.append({"name": dataset.names[index], "problem": str(err)})
    if not samples:
        raise DataError(dataset.root, "no readable image was chosen for the benchmark")
    heads_of = {dataset.names[index]: heads for index, heads in chosen}

    start = time.perf_counter()
    predictor, description = build_predictor(cfg)
    xmask = Timed("xmask", description, load_s=time.perf_counter() - start)
    predictions = _time_calls(
        xmask, lambda s: predictor.segment_points(s.image, s.points), samples, cfg
    )
    own = None
    if cfg.checkpoint is not None:
        own = Timed("xmask_predicted", description)
        _time_calls(own, lambda s: predictor(s.image), samples, cfg)
    methods = _time_baselines(samples, cfg)
    return _report(cfg, samples, heads_of, predictor, xmask, own, predictions, methods, skipped)


def _report(
    cfg: BenchConfig,
    samples: Sequence[Sample],
    heads_of: dict[str, int],
    predictor: Predictor,
    xmask: Timed,
    own: Timed | None,
    predictions: Sequence[Any],
    methods: Sequence[Timed],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    """The JSON-ready report of :func:`run_bench`."""
    post = [p.post_s for p in predictions]
    network = [p.network_s for p in predictions]
    total = [float(s) for s in xmask.seconds if s is not None]
    bins = [bin_of(heads_of[s.name], cfg.edges) for s in samples]
    dense = [i for i, s in enumerate(samples) if s.count >= DENSE]
    per_image = []
    for i, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        row = {
            "name": sample.name,
            "heads": sample.count,
            "heads_in_file": heads_of[sample.name],
            "size": f"{sample.size[1]}x{sample.size[0]}",
            "predicted_count": prediction.count,
            "segmented_heads": int((prediction.areas > 0).sum()),
            "xmask_s": total[i],
            "xmask_network_s": network[i],
            "xmask_post_s": post[i],
        }
        if own is not None:
            row["xmask_predicted_s"] = own.seconds[i]
        row |= {f"{m.name}_s": m.seconds[i] for m in methods}
        per_image.append(row)
    report: dict[str, Any] = {
        "setup": {
            "dataset": "sha",
            "root": str(cfg.root),
            "split": cfg.split,
            "per_bin": cfg.per_bin,
            "bin_edges": list(cfg.edges),
            "device": str(predictor.device),
            "torch_threads": torch.get_num_threads(),
            "warmup_calls": 1,
            "timed_calls_per_image": cfg.repeat,
            "xmask_model": xmask.description,
            "checkpoint": cfg.checkpoint,
            "count_rule": predictor.count_rule.describe(),
            "xmask_load_s": xmask.load_s,
        },
        "images": len(samples),
        "heads": sum(s.count for s in samples),
        "segmented_heads": sum(r["segmented_heads"] for r in per_image),
        "predicted_count": sum(p.count for p in predictions),
        "bins": _bins(cfg.edges, bins, samples, per_image, methods, own),
        "xmask_s_per_image": _mean(total),
        "xmask_network_s_per_image": _mean(network),
        "xmask_post_s_per_image": _mean(post),
    }
    if own is not None:
        report["xmask_predicted_s_per_image"] = _mean(own.seconds)
    for m in methods:
        report[f"{m.name}_s_per_image"] = _mean(m.seconds)
    report |= {
        "post_network_share": _share(post, total),
        "post_network_share_over_1000_heads": _share(
            [post[i] for i in dense], [total[i] for i in dense]
        ),
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb_after": {"xmask": xmask.rss_mb_after}
        | {m.name: m.rss_mb_after for m in methods if m.status == "ok"},
        "baselines": {
            m.name: {
                "description": m.description,
                "status": m.status,
                "reason": m.reason,
                "load_s": m.load_s,
            }
            for m in methods
        },
        "per_image": per_image,
        "skipped": skipped,
    }
    return report


def _bins(
    edges: Sequence[int],
    bins: Sequence[int],
    samples: Sequence[Sample],
    rows: Sequence[dict[str, Any]],
    methods: Sequence[Timed],
    own: Timed | None,
) -> list[dict[str, Any]]:
    """Per-bin image counts, heads and mean seconds of every method."""
    out = []
    names = ["xmask", *(["xmask_predicted"] if own is not None else []), *(m.name for m in methods)]
    for index, lo in enumerate(edges):
        members = [i for i, b in enumerate(bins) if b == index]
        entry: dict[str, Any] = {
            "lo": lo,
            "hi": edges[index + 1] if index + 1 < len(edges) else None,
            "images": len(members),
            "heads": sum(samples[i].count for i in members),
        }
        for name in names:
            entry[f"{name}_s"] = _mean([rows[i][f"{name}_s"] for i in members])
        out.append(entry)
    return out


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a :func:`run_bench` report."""
    setup = report["setup"]
    names = [key[: -len("_s_per_image")] for key in report if key.endswith("_s_per_image")]
    names = [n for n in names if n not in ("xmask_network", "xmask_post")]
    lines = [
        f"ShanghaiTech A {setup['split']} ({setup['root']}): {report['images']} images, "
        f"first {setup['per_bin']} per bin, device {setup['device']}, "
        f"torch threads {setup['torch_threads']}, 1 warm-up call per method",
        f"xmask: {setup['xmask_model']}, count threshold {setup['count_rule']}",
        "",
        "| heads | images | " + " | ".join(f"{n} s" for n in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for entry in report["bins"]:
        hi = "∞" if entry["hi"] is None else entry["hi"]
        cells = " | ".join(_seconds(entry[f"{n}_s"]) for n in names)
        lines.append(f"| [{entry['lo']}, {hi}) | {entry['images']} | {cells} |")
    cells = " | ".join(_seconds(report[f"{n}_s_per_image"]) for n in names)
    lines.append(f"| all | {report['images']} | {cells} |")
    share, dense = report["post_network_share"], report["post_network_share_over_1000_heads"]
    lines += [
        "",
        f"heads {report['heads']:,} (ground truth), {report['segmented_heads']:,} with a "
        f"non-empty xmask mask; xmask's own count {report['predicted_count']:,}",
        f"xmask per image: network {_seconds(report['xmask_network_s_per_image'])} s, "
        f"after the network {_seconds(report['xmask_post_s_per_image'])} s "
        f"(share {_percent(share)}; images with >= {DENSE} heads: {_percent(dense)})",
        f"peak RSS {report['peak_rss_mb']:,.0f} MiB",
    ]
    for name, info in report["baselines"].items():
        what = info["description"] if info["status"] == "ok" else f"skipped: {info['reason']}"
        lines.append(f"{name}: {what}")
    lines += [f"skipped {s['name']}: {s['problem']}" for s in report["skipped"]]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"
