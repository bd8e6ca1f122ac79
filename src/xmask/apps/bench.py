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
    ``xmask``: :meth:`xmask.inference.predictor.Predictor.segment_points` with the image's
    ground-truth points as the heads: the network (logits and mask embedding), the count decoding,
    the smoothing of the embedding and Eq. 11–12 for every head, ending with the ``H×W`` label map
    on the host. Giving every method the same heads makes the per-head work equal; the time with
    the model's own heads, ``Predictor(image)``, is reported too, and the network's own count as
    ``predicted_count``. The model is the shipped one (what users run) unless ``--model`` names
    another (a model name or folder, or a training run with a mask head). Baselines have random
    weights: weights do not change the compute of a fixed set
    of heads. ``fastsam-x`` / ``fastsam-s``: FastSAM-x / -s (YOLOv8x-seg / YOLOv8s-seg, random
    weights, :mod:`xmask.annotate.fastsam`; the ``fastsam`` extra; without it the baseline is
    noted as ``unavailable`` and the benchmark still succeeds) on the image, then each
    ground-truth point answered from its candidates with NNEC clipping and circle fallback (the
    ``fastsam-nnec`` backend, the paper's FastSAM + NNEC, which like xmask gives every head a
    mask). ``sam-vit-b``: EDP-SAM
    (:mod:`xmask.annotate.edp_sam`, SAM ViT-B with random weights, box prompts from SLIC
    superpixels, one prompt per ground-truth point). Not timed: building the networks, reading
    files. Before timing, every method makes one untimed warm-up call on the first selected image;
    then each image is run ``--repeat`` times (default 3) and the median call is reported (for xmask
    with its network / post-network split), which keeps one-off costs of a new image size out of the
    figures.

Other figures
    ``segmented_heads``: ground-truth heads that got a non-empty xmask mask. ``post_s``:
    xmask's time after the network (:class:`xmask.inference.prediction.Prediction`);
    ``post_network_share`` is its sum over the sum of xmask's times (over all images, and over
    images with at least 1000 heads). ``peak_rss_mb``: ``ru_maxrss`` of the process (model
    building included; it never decreases), also recorded after each method.
    ``slowest_over_fastest_bin``: per method, the slowest bin's mean time over the fastest's
    (of the median calls), and the lowest and highest that ratio takes over the timed calls
    (every image's first call, every image's second, ...): how far one run's ratio can be
    trusted.
"""

from __future__ import annotations

import gc
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xmask.annotate.fastsam_model import FastSamConfig
from xmask.annotate.pipeline import build_backend
from xmask.annotate.sam_model import SamConfig
from xmask.apps.bench_report import Timed, bench_report, bin_of, peak_rss_mb
from xmask.data.readers import CrowdDataset, open_dataset
from xmask.errors import DataError, MissingDependencyError, UsageError, XmaskError
from xmask.inference.predictor import Predictor
from xmask.types import Sample

log = logging.getLogger(__name__)

DEFAULT_EDGES: tuple[int, ...] = (0, 100, 250, 500, 1000)
"""Lower edges of the density bins (ground-truth heads); the last bin is open."""
BASELINES: tuple[str, ...] = ("fastsam-x", "fastsam-s", "sam-vit-b")
"""Baselines ``--baselines`` accepts."""

Backend = Callable[[np.ndarray, np.ndarray], Any]
"""``(image H×W×3 uint8, points N×2 (x, y)) → masks``: a baseline's whole per-image work."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        root: the ShanghaiTech folder (holding ``part_A``); None: the configured one
            (:func:`xmask.data.locations.dataset_root`).
        checkpoint: a model with a mask head (a name, a model folder, or a run: its folder,
            ``checkpoints/``, ``best/`` or a ``.safetensors`` file); None: the shipped model.
        which: the network of the checkpoint.
        per_bin: images per density bin.
        baselines: names from :data:`BASELINES`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        edges: lower bin edges, ascending from 0 (the last bin is open).
        split: the ShanghaiTech A split.
        progress: log one line per image and method.
        repeat: timed calls per image and method; the median one is reported.
        backend: what runs xmask's network (``"auto"`` or one of
            :data:`xmask.inference.predictor.BACKENDS`).
        mask_grid: xmask's masks on blocks of this many pixels a side
            (:mod:`xmask.segment.grid`).
    """

    root: Path | None
    checkpoint: str | None = None
    which: str = "teacher"
    per_bin: int = 2
    baselines: tuple[str, ...] = BASELINES
    device: str = "auto"
    edges: tuple[int, ...] = DEFAULT_EDGES
    split: str = "test"
    progress: bool = True
    repeat: int = 3
    backend: str = "auto"
    mask_grid: int = 1


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


def build_predictor(cfg: BenchConfig) -> tuple[Predictor, str]:
    """xmask's predictor and its description: ``cfg.checkpoint`` (a model name or folder, or a
    run), else the shipped model (what users run).

    Raises:
        UsageError: a model without a mask head.
    """
    predictor = Predictor.load(
        cfg.checkpoint, cfg.device, cfg.which, backend=cfg.backend, mask_grid=cfg.mask_grid
    )
    if not predictor.has_masks:
        raise UsageError(f"{predictor.source}: the model has no mask head")
    backend = "" if predictor.backend == "torch" else f", {predictor.backend} backend"
    if cfg.mask_grid != 1:
        backend += f", masks on {cfg.mask_grid}×{cfg.mask_grid}-pixel blocks"
    if cfg.checkpoint is None:
        name = predictor.source.name if predictor.source else "default"
        return predictor, f"{name} (shipped{backend})"
    return predictor, f"{cfg.checkpoint} ({cfg.which}{backend})"


def build_baseline(name: str, device: str) -> tuple[Backend, str]:
    """A baseline's per-image call and its description (random weights).

    Raises:
        UsageError: its optional dependency is missing, or an unknown name.
    """

    if name in ("fastsam-x", "fastsam-s"):
        arch = "x" if name == "fastsam-x" else "s"
        fastsam = FastSamConfig(weights=None, arch=arch, device=device)
        run = build_backend("fastsam-nnec", fastsam=fastsam)
        return run, f"FastSAM-{arch} (YOLOv8{arch}-seg) random weights, fastsam-nnec matching"
    if name == "sam-vit-b":
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
        timed.calls.append([call[0] for call in calls])
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
    except MissingDependencyError as err:  # an extra not installed: a note, not a failure
        log.warning("baseline %s not run: %s", name, err)
        return Timed(name, "", [None] * len(samples), status="unavailable", reason=str(err))
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
    own = Timed("xmask_predicted", description)
    _time_calls(own, lambda s: predictor(s.image), samples, cfg)
    methods = _time_baselines(samples, cfg)
    setup = {
        "dataset": "sha",
        "root": str(dataset.root),
        "split": cfg.split,
        "per_bin": cfg.per_bin,
        "bin_edges": list(cfg.edges),
        "warmup_calls": 1,
        "timed_calls_per_image": cfg.repeat,
        "checkpoint": cfg.checkpoint,
    }
    return bench_report(
        setup, cfg.edges, samples, heads_of, predictor, xmask, own, predictions, methods, skipped
    )
