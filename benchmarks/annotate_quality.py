"""Annotation quality against exact masks: every backend on the same synthetic crowds.

    python benchmarks/annotate_quality.py [--images 8] [--backends disc,superpixel,sam,...] \\
        [--sam-checkpoint sam_vit_b_01ec64.pth] [--fastsam-checkpoint FastSAM-x.pt] \\
        [--xmask-checkpoint RUN] [--json]

Crowds come from :func:`xmask.data.synthetic.make_crowd` (exact points and exact instance label
maps): ``--images`` crowds of ``--height``×``--width`` px, each with a head count drawn from
``--heads LO-HI`` (default 384×512, 50–400 heads), every second one with perspective (heads
grow towards the bottom, density falls as ``1/r²``). Crowd ``i`` depends only on ``--seed`` and
``i`` (as in :func:`~xmask.data.synthetic.make_crowd_folder`).

Backends: the five of :func:`xmask.annotate.pipeline.build_backend` (``superpixel``, ``sam``,
``sam-point``, ``fastsam``, ``fastsam-nnec``) and two baselines without any region, built from
:func:`~xmask.geometry.circles.head_circles` and :func:`~xmask.geometry.circles.disc_keep` through
:func:`~xmask.geometry.labels.resolve_labels`: ``disc`` (the disc of ``--disc-fraction``·r_i,
default 0.5, the fallback of the superpixel and SAM backends) and ``circle`` (the whole NNEC
circle r_i). Without ``--sam-checkpoint`` / ``--fastsam-checkpoint`` the networks are randomly
initialised: their rows then measure speed only (the table says so). A backend whose optional
dependency (segment-anything, ultralytics) is missing is reported as skipped. ``xmask`` is
a trained Stage-2 model (``--xmask-checkpoint RUN``) segmenting the exact head points
(:meth:`xmask.inference.predictor.Predictor.segment_points`); ``benchmarks/synthetic_stage2.py``
trains one on other synthetic crowds and runs this table with it.

Metrics: :func:`xmask.metrics.segmentation.segmentation_counts` per image (Hungarian mean IoU,
precision / recall / F1 at IoU >= 0.5), summed over the crowds before dividing (micro
averages, as the authors report them). ``s/img`` is the backend call alone (model loading and
the optional warm-up call excluded; loading is in the JSON as ``load_s``).

Prints one markdown table (``--json``: one JSON object). SAM on a CPU costs about half a
minute of image encoder per image plus about 0.2 s of mask decoder per head (see
:mod:`xmask.annotate.edp_sam`): the full default run takes tens of minutes there.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from xmask.annotate.fastsam_model import FastSamConfig
from xmask.annotate.pipeline import BACKENDS, build_backend
from xmask.annotate.sam_model import SamConfig
from xmask.data.synthetic import make_crowd
from xmask.device import resolve_device
from xmask.errors import UsageError
from xmask.geometry.circles import disc_keep, head_circles
from xmask.geometry.labels import MaskResult, resolve_labels
from xmask.inference.predictor import Predictor
from xmask.metrics.segmentation import SegmentationCounts, segmentation_counts
from xmask.types import Sample

log = logging.getLogger("annotate_quality")


@dataclass
class PredictedMasks:
    """XMask's masks of one crowd in the shape :func:`evaluate` reads from a backend."""

    labels: np.ndarray
    area: np.ndarray

    @property
    def fallback(self) -> np.ndarray:
        """XMask has no fallback masks."""
        return np.zeros(len(self.area), dtype=bool)

    @property
    def empty(self) -> int:
        """Number of heads with an empty mask."""
        return int((self.area == 0).sum())


Backend = Callable[[np.ndarray, np.ndarray], MaskResult | PredictedMasks]

BASELINES = ("disc", "circle")
ALL_BACKENDS = (*BASELINES, *BACKENDS, "xmask")
NEEDS = {
    "sam": ("segment_anything", "segment-anything", "sam"),
    "sam-point": ("segment_anything", "segment-anything", "sam"),
    "fastsam": ("ultralytics", "ultralytics", "fastsam"),
    "fastsam-nnec": ("ultralytics", "ultralytics", "fastsam"),
}
"""Backend → (module imported, distribution, xmask extra) of its optional dependency."""


@dataclass
class Settings:
    """What the backends are built with (from the command line).

    Attributes:
        sam: SAM settings (checkpoint None: random weights).
        fastsam: FastSAM settings (weights None: random weights).
        disc_fraction: radius of the ``disc`` baseline as a fraction of ``r_i``.
        warmup: calls on a small crowd before timing each network backend.
        xmask_checkpoint: a Stage-2 run (or checkpoint) for the ``xmask`` row.
    """

    sam: SamConfig
    fastsam: FastSamConfig
    disc_fraction: float = 0.5
    warmup: int = 0
    xmask_checkpoint: str | None = None


@dataclass
class Row:
    """One backend's result over all crowds (``status`` ``"ok"`` or ``"skipped"``)."""

    backend: str
    model: str
    weights: str
    status: str = "ok"
    reason: str = ""
    images: int = 0
    heads: int = 0
    load_s: float = 0.0
    seconds_per_image: float = 0.0
    fallback_masks: int = 0
    empty_masks: int = 0
    metrics: dict[str, float | int] = field(default_factory=dict)


def parse_heads(text: str) -> tuple[int, int]:
    """``"N"`` or ``"LO-HI"`` → inclusive head-count range ``(lo, hi)``."""
    lo, _, hi = text.partition("-")
    try:
        bounds = (int(lo), int(hi or lo))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--heads: N or LO-HI, got {text!r}") from err
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"--heads: need 0 <= LO <= HI, got {text!r}")
    return bounds


def parse_backends(text: str) -> list[str]:
    """Comma-separated backend names, checked against :data:`ALL_BACKENDS`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--backends: unknown {unknown or text!r}; available: {', '.join(ALL_BACKENDS)}"
        )
    return names


def make_crowds(
    count: int, height: int, width: int, heads: tuple[int, int], seed: int
) -> list[Sample]:
    """``count`` synthetic crowds; crowd ``i`` depends only on ``seed`` and ``i``, odd ones
    have perspective."""
    crowds = []
    for index, child in enumerate(np.random.SeedSequence(seed).spawn(count)):
        rng = np.random.default_rng(child)
        crowds.append(
            make_crowd(
                height,
                width,
                int(rng.integers(heads[0], heads[1] + 1)),
                perspective=index % 2 == 1,
                seed=rng,
                name=f"crowd_{index:02d}.png",
            )
        )
    return crowds


def disc_backend(fraction: float, sam: SamConfig) -> Backend:
    """The region-free baseline: each head's disc of ``fraction·r_i`` (NNEC radius, ``r_min``
    and duplicate policy of ``sam``, which are the library's defaults), resolved like every
    backend's candidates."""

    def run(image: np.ndarray, points: np.ndarray) -> MaskResult:
        circles = head_circles(points, image.shape[:2], sam.r_min, sam.duplicates)
        return resolve_labels(circles, disc_keep(circles, fraction))

    return run


def xmask_backend(checkpoint: str, device: str) -> Backend:
    """The Stage-2 teacher of ``checkpoint`` segmenting the given heads (Eq. 11–12)."""
    predictor = Predictor.load(checkpoint, device=device)
    if not predictor.has_masks:
        raise UsageError(f"{checkpoint}: the model has no mask head")

    def run(image: np.ndarray, points: np.ndarray) -> PredictedMasks:
        prediction = predictor.segment_points(image, points)
        assert prediction.labels is not None and prediction.areas is not None
        return PredictedMasks(prediction.labels, prediction.areas)

    return run


def describe(name: str, settings: Settings) -> tuple[str, str]:
    """``(model, weights)`` of a backend: weights ``"none"`` (no network), ``"trained"`` (a
    checkpoint file) or ``"random"`` (random initialisation); none of these backends starts
    from ImageNet weights."""
    if name == "disc":
        return f"{settings.disc_fraction:g}·r_i", "none"
    if name == "circle":
        return "r_i", "none"
    if name == "superpixel":
        return "SLIC", "none"
    if name == "xmask":
        return f"Stage 2, {settings.xmask_checkpoint}", "trained"
    if name.startswith("sam"):
        trained = settings.sam.checkpoint is not None
        return f"SAM {settings.sam.model_type}", "trained" if trained else "random"
    trained = settings.fastsam.weights is not None
    return f"FastSAM-{settings.fastsam.arch}", "trained" if trained else "random"


def missing_dependency(name: str, settings: Settings) -> str | None:
    """Why ``name`` cannot run here (its optional dependency is not installed, or no
    checkpoint for ``xmask``), or None."""
    if name == "xmask" and settings.xmask_checkpoint is None:
        return "no --xmask-checkpoint given"
    if name not in NEEDS:
        return None
    module, distribution, extra = NEEDS[name]
    if importlib.util.find_spec(module) is None:
        return f"{distribution} not installed (pip install 'xmask[{extra}]')"
    return None


def build(name: str, settings: Settings) -> Backend:
    """The backend called ``name`` (a baseline here, the others via ``build_backend``)."""
    if name == "disc":
        return disc_backend(settings.disc_fraction, settings.sam)
    if name == "circle":
        return disc_backend(1.0, settings.sam)
    if name == "xmask":
        assert settings.xmask_checkpoint is not None
        return xmask_backend(settings.xmask_checkpoint, settings.sam.device)
    return build_backend(name, sam=settings.sam, fastsam=settings.fastsam)


def evaluate(name: str, crowds: Sequence[Sample], settings: Settings) -> Row:
    """Build backend ``name`` once, run it on every crowd and score its label maps."""
    model, weights = describe(name, settings)
    row = Row(backend=name, model=model, weights=weights)
    reason = missing_dependency(name, settings)
    if reason is not None:
        log.warning("%s skipped: %s", name, reason)
        row.status, row.reason = "skipped", reason
        return row
    start = time.perf_counter()
    try:
        run = build(name, settings)
    except (ImportError, UsageError) as err:  # an optional dependency that fails to import
        log.warning("%s skipped: %s", name, err)
        row.status, row.reason = "skipped", str(err)
        return row
    row.load_s = time.perf_counter() - start
    if name in NEEDS and settings.warmup:
        small = make_crowd(96, 128, 8, seed=0)
        for _ in range(settings.warmup):
            run(small.image, small.points)
    counts = SegmentationCounts()
    seconds = 0.0
    for sample in crowds:
        start = time.perf_counter()
        result = run(sample.image, sample.points)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        assert sample.labels is not None
        image_counts = segmentation_counts(sample.labels, result.labels)
        counts = counts + image_counts
        row.heads += len(sample.points)
        row.fallback_masks += int(result.fallback.sum())
        row.empty_masks += result.empty
        log.info(
            "%s %s: %d heads, %.2f s, mean IoU %.3f, F1@0.5 %.3f",
            name,
            sample.name,
            len(sample.points),
            elapsed,
            image_counts.mean_iou,
            image_counts.f1,
        )
    row.images = len(crowds)
    row.seconds_per_image = seconds / max(len(crowds), 1)
    row.metrics = counts.to_dict()
    return row


def markdown(rows: Sequence[Row], setup: dict[str, object]) -> str:
    """The markdown table of ``rows`` with a line on the setup and notes below."""
    lines = [
        f"{setup['images']} synthetic crowds, {setup['height']}×{setup['width']} px, "
        f"{setup['heads_range']} heads (total {setup['heads_total']}), seed {setup['seed']}, "
        f"device {setup['device']}",
        "",
        "| backend | weights | mean IoU | F1@0.5 | s/img |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        label = f"{row.backend} ({row.model})"
        if row.status != "ok":
            lines.append(f"| {label} | {row.weights} | skipped | skipped | — |")
            continue
        mean_iou, f1 = row.metrics["mean_iou"], row.metrics["f1"]
        lines.append(
            f"| {label} | {row.weights} | {mean_iou:.3f} | {f1:.3f} | {row.seconds_per_image:.3f} |"
        )
    notes = [
        f"- {row.backend}: random weights (no checkpoint given): its masks are meaningless, "
        "the row measures speed only."
        for row in rows
        if row.status == "ok" and row.weights == "random"
    ]
    notes += [f"- {row.backend} skipped: {row.reason}" for row in rows if row.status != "ok"]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8, help="synthetic crowds (default 8)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=parse_heads, default=(50, 400), help="N or LO-HI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backends",
        type=parse_backends,
        default=list(ALL_BACKENDS),
        help=f"comma list of {', '.join(ALL_BACKENDS)} (default: all)",
    )
    parser.add_argument("--disc-fraction", type=float, default=0.5, help="disc radius / r_i")
    parser.add_argument("--sam-checkpoint", help="local SAM checkpoint; default: random weights")
    parser.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--sam-prompt", default="box", choices=("box", "mask", "points", "none"))
    parser.add_argument("--sam-batch", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--fastsam-checkpoint", help="local FastSAM .pt; default: random weights")
    parser.add_argument("--fastsam-arch", default=FastSamConfig.arch, choices=("s", "x"))
    parser.add_argument("--fastsam-imgsz", type=int, default=FastSamConfig.imgsz)
    parser.add_argument(
        "--fastsam-trust-pickle",
        action="store_true",
        help="allow a full unpickle of the FastSAM file (runs code from the file)",
    )
    parser.add_argument("--xmask-checkpoint", help="a Stage-2 run folder for the xmask row")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls on a small crowd before each network backend (default: 1 on "
        "CUDA, 0 on the CPU)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for flag in ("sam_checkpoint", "fastsam_checkpoint"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            parser.error(f"--{flag.replace('_', '-')}: {path} not found")
    device = resolve_device(args.device)
    settings = Settings(
        sam=SamConfig(
            checkpoint=args.sam_checkpoint,
            model_type=args.sam_model,
            superpixel_prompt=args.sam_prompt,
            batch_size=args.sam_batch,
            device=args.device,
        ),
        fastsam=FastSamConfig(
            weights=args.fastsam_checkpoint,
            arch=args.fastsam_arch,
            imgsz=args.fastsam_imgsz,
            trust_pickle=args.fastsam_trust_pickle,
            device=args.device,
        ),
        disc_fraction=args.disc_fraction,
        warmup=args.warmup if args.warmup is not None else int(device.type == "cuda"),
        xmask_checkpoint=args.xmask_checkpoint,
    )
    start = time.perf_counter()
    crowds = make_crowds(args.images, args.height, args.width, args.heads, args.seed)
    log.info("%d crowds made in %.1f s", len(crowds), time.perf_counter() - start)
    rows = []
    for name in args.backends:
        rows.append(evaluate(name, crowds, settings))
        gc.collect()  # drop the previous network before building the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
    setup: dict[str, object] = {
        "images": args.images,
        "height": args.height,
        "width": args.width,
        "heads_range": "-".join(map(str, sorted(set(args.heads)))),
        "heads_total": sum(len(sample.points) for sample in crowds),
        "seed": args.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "sam_prompt": args.sam_prompt,
        "fastsam_imgsz": args.fastsam_imgsz,
    }
    if args.json:
        print(
            json.dumps(
                {"setup": setup, "rows": [asdict(row) for row in rows]},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(markdown(rows, setup))


if __name__ == "__main__":
    main()
