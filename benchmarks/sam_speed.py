"""EDP-SAM (the ``sam`` annotation backend) seconds per image on ShanghaiTech A test images, split
into image embedding, superpixels and prompt + mask decoder.

    python benchmarks/sam_speed.py [--root ../shared/data/shanghaitech] \\
        [--sam-checkpoint sam_vit_b_01ec64.pth] [--images IMG_1.jpg,IMG_2.jpg] [--device cpu]

Images: by default the test image whose head count is closest to ``--target-heads`` (172;
ties: the first in name order) and the first image in name order with more than
``--dense-heads`` (1,000) heads; head counts are those of the ground-truth files (before
points outside the image are dropped). ``--images NAME[,NAME]`` names them instead;
``--synthetic HxW:N[,HxW:N]`` uses synthetic crowds (:func:`xmask.data.synthetic.make_crowd`,
seed 0) and no dataset; ``--select-only`` prints the chosen images (name, size, heads) without
building SAM.

SAM: ``--sam-model`` (default ``vit_b``) with the weights of ``--sam-checkpoint``, or random
weights when none is given (SAM's compute does not depend on its weights). Settings are the
backend's defaults (:class:`xmask.annotate.sam_model.SamConfig`: box prompts, 64 prompts per
decoder call, tiles above 1280 px) unless changed by the flags.

Phases: the backend's own hook. ``build_backend("sam")`` is ``sam_backend``, which builds the
predictor once (:func:`~xmask.annotate.sam_model.build_sam`) and calls
:func:`~xmask.annotate.edp_sam.annotate_sam` per image; this script makes the same two calls and
passes a :class:`~xmask.annotate.edp_sam.SamStats`, which ``annotate_sam`` fills: ``encoder_s``
is the time in ``predictor.set_image`` (the image embedding, once per view: ShanghaiTech A
images are one view), ``superpixel_s`` SLIC and the prompt geometry, ``decoder_s`` the prompt
encoder, mask decoder and sampling at the circle pixels, in batches. No phase is re-timed by
subtraction. On CUDA the backend synchronises after ``set_image``, so the asynchronous encoder
is not billed to the next phase; the decoder phase ends with a copy to the host, which
synchronises anyway.

Memory: ``peak_rss_mb`` is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the image, the
peak of the whole process so far (model loading included; it never goes down, so a later
image only shows a higher figure if it needed more); on CUDA ``cuda_peak_mb`` is the peak
allocated GPU memory during the image alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from xmask.annotate.edp_sam import SamStats, annotate_sam
from xmask.annotate.sam_model import SamConfig, build_sam
from xmask.data.readers import CrowdDataset, open_dataset
from xmask.data.synthetic import make_crowd
from xmask.device import resolve_device
from xmask.types import Sample

if TYPE_CHECKING:
    from segment_anything import SamPredictor

log = logging.getLogger("sam_speed")


@dataclass
class Chosen:
    """An image to time: its name, size and head count, and how to load it."""

    name: str
    size: tuple[int, int]
    heads: int
    why: str
    load: Callable[[], Sample]


@dataclass
class Timing:
    """One image's timing (seconds) and memory (MiB)."""

    name: str
    size: str
    heads: int
    views: int
    fallback: int
    total_s: float
    embedding_s: float
    superpixel_s: float
    prompt_decoder_s: float
    decoder_s_per_head: float
    other_s: float
    peak_rss_mb: float
    cuda_peak_mb: float | None


def parse_synthetic(text: str) -> list[tuple[int, int, int]]:
    """``"HxW:N[,HxW:N]"`` → ``[(H, W, N), ...]``."""
    specs = []
    for part in text.split(","):
        try:
            size, heads = part.strip().split(":")
            height, width = size.lower().split("x")
            specs.append((int(height), int(width), int(heads)))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--synthetic: HxW:N[,HxW:N], got {text!r}") from err
    return specs


def synthetic_images(specs: Sequence[tuple[int, int, int]]) -> list[Chosen]:
    """Synthetic crowds of the given ``(H, W, heads)`` (seed 0)."""
    chosen = []
    for index, (height, width, heads) in enumerate(specs):
        name = f"synthetic_{index}_{height}x{width}_{heads}.png"
        load = partial(make_crowd, height, width, heads, seed=0, name=name)
        chosen.append(Chosen(name, (height, width), heads, "synthetic", load))
    return chosen


def dataset_images(
    dataset: CrowdDataset, names: Sequence[str] | None, target: int, dense: int
) -> list[Chosen]:
    """The named images of ``dataset`` (in that order), or the one whose head count is closest
    to ``target`` and the first with more than ``dense`` heads. Only point files and image
    headers are read here."""
    items = dataset.items
    counts = [len(dataset.read_points(item)) for item in items]
    if names is not None:
        picks = [(index, "named") for index in range(len(items))]
    else:
        closest = min(range(len(items)), key=lambda i: (abs(counts[i] - target), i))
        picks = [(closest, f"head count closest to {target}")]
        first_dense = next((i for i, count in enumerate(counts) if count > dense), None)
        if first_dense is None:
            log.warning("no image of the split has more than %d heads", dense)
        else:
            picks.append((first_dense, f"first with more than {dense} heads"))
    chosen = []
    for index, why in picks:
        item = items[index]
        with Image.open(item.image) as image:
            width, height = image.size
        load = partial(dataset.load, item)
        chosen.append(Chosen(item.name, (height, width), counts[index], why, load))
    return chosen


def time_image(
    sample: Sample, predictor: SamPredictor, cfg: SamConfig, device: torch.device
) -> Timing:
    """Run the backend on one image with a :class:`SamStats` and report where the time went."""
    stats = SamStats()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = annotate_sam(sample.image, sample.points, predictor, cfg, stats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - start
    heads = len(sample.points)
    h, w = sample.size
    phases = stats.encoder_s + stats.superpixel_s + stats.decoder_s
    return Timing(
        name=sample.name,
        size=f"{w}x{h}",
        heads=heads,
        views=stats.views,
        fallback=int(result.fallback.sum()),
        total_s=round(total, 3),
        embedding_s=round(stats.encoder_s, 3),
        superpixel_s=round(stats.superpixel_s, 3),
        prompt_decoder_s=round(stats.decoder_s, 3),
        decoder_s_per_head=round(stats.decoder_s / max(heads, 1), 5),
        other_s=round(total - phases, 3),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        cuda_peak_mb=(
            round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="../shared/data/shanghaitech", help="holds part_A")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", help="NAME[,NAME] of the split instead of the default two")
    parser.add_argument("--target-heads", type=int, default=172)
    parser.add_argument("--dense-heads", type=int, default=1000)
    parser.add_argument(
        "--synthetic", type=parse_synthetic, help="HxW:N[,HxW:N] synthetic crowds, no dataset"
    )
    parser.add_argument("--select-only", action="store_true", help="list the images, no SAM")
    parser.add_argument("--sam-checkpoint", help="local SAM checkpoint; default: random weights")
    parser.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--sam-prompt", default="box", choices=("box", "mask", "points", "none"))
    parser.add_argument("--sam-batch", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls on a small crowd first (default: 1 on CUDA, 0 on the CPU)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        parser.error(f"--sam-checkpoint: {args.sam_checkpoint} not found")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.synthetic is not None:
        chosen = synthetic_images(args.synthetic)
    else:
        names = [n.strip() for n in args.images.split(",") if n.strip()] if args.images else None
        dataset = open_dataset("sha", args.root, args.split, names=names)
        chosen = dataset_images(dataset, names, args.target_heads, args.dense_heads)
    listing = [
        {"name": c.name, "size": f"{c.size[1]}x{c.size[0]}", "heads": c.heads, "why": c.why}
        for c in chosen
    ]
    if args.select_only:
        print(json.dumps({"images": listing}, indent=2))
        return
    cfg = SamConfig(
        checkpoint=args.sam_checkpoint,
        model_type=args.sam_model,
        superpixel_prompt=args.sam_prompt,
        batch_size=args.sam_batch,
        device=args.device,
    )
    device = resolve_device(args.device)
    start = time.perf_counter()
    predictor = build_sam(cfg)
    load_s = time.perf_counter() - start
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")
    if warmup:
        small = make_crowd(96, 128, 8, seed=0)
        for _ in range(warmup):
            annotate_sam(small.image, small.points, predictor, cfg)
    timings = []
    for image in chosen:
        sample = image.load()
        log.info(
            "%s: %dx%d, %d heads (%s)",
            image.name,
            sample.size[1],
            sample.size[0],
            len(sample.points),
            image.why,
        )
        timings.append(time_image(sample, predictor, cfg, device))
        log.info("%s: %.1f s", image.name, timings[-1].total_s)
    setup = {
        "model": args.sam_model,
        "weights": "trained" if args.sam_checkpoint else "random",
        "checkpoint": args.sam_checkpoint,
        "prompt": args.sam_prompt,
        "batch_size": args.sam_batch,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "warmup_calls": warmup,
        "load_s": round(load_s, 2),
    }
    report = {
        "setup": setup,
        "images": [asdict(t) | {"why": c.why} for t, c in zip(timings, chosen, strict=True)],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
