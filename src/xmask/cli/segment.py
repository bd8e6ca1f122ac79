"""``xmask segment``: count, head points and one instance mask per head with a trained model.

Output folder ``DIR`` (every file written atomically):

- ``masks/STEM.png``: 16-bit instance label map (0 background, ``k`` = the ``k``-th point);
- ``points/STEM.txt``: the predicted head points, ``x y`` per line, in label order;
- ``overlays/STEM.png``: the image with a translucent colour per instance and a dot per head;
- ``annotations.json``: COCO instances with RLE masks, one annotation per head with its point
  as keypoint (:func:`xmask.annotate.coco.label_maps_to_coco`), rebuilt from every finished
  image of the source at the end;
- ``summary.json``: images and heads segmented by this run, images already done, seconds
  (total, network, post-network), the count threshold, skipped items.

An image is done when its three files exist (the label map is written last), so a re-run
skips finished images. Unreadable images are reported and skipped (exit code 3).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xmask.cli import EXIT_OK, EXIT_SKIPPED

if TYPE_CHECKING:
    import numpy as np

    from xmask.annotate.coco import ImageRecord
    from xmask.predictor import Predictor

log = logging.getLogger("xmask")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask segment``."""
    parser = sub.add_parser(
        "segment",
        help="count, head points and one instance mask per head with a trained model",
        description="Run a trained model (with a mask head) on an image, a folder of images or "
        "a dataset split and write DIR/masks/NAME.png (16-bit label map), "
        "DIR/points/NAME.txt, DIR/overlays/NAME.png, DIR/annotations.json (COCO, RLE masks, "
        "head points as keypoints) and DIR/summary.json. A re-run skips finished images; "
        f"unreadable images are reported and skipped (exit code {EXIT_SKIPPED}).",
    )
    parser.add_argument(
        "source", nargs="?", metavar="SOURCE", help="an image file or a folder of images"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_OR_FILE",
        help="run folder, its checkpoints/ or best/ folder, or a .safetensors file in a run",
    )
    parser.add_argument(
        "--which", choices=("teacher", "student"), default="teacher", help="network to run"
    )
    parser.add_argument(
        "--threshold",
        default="auto",
        metavar="LOGIT",
        help="count cells with a logit above this; auto (default): the threshold stored for "
        "these weights, else 0",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: segment-NAME)")
    parser.add_argument("--dataset", help="instead of SOURCE: sha, shb, ucf, jhu or folder")
    parser.add_argument("--root", help="dataset folder (with --dataset)")
    parser.add_argument("--split", default="test", help="split (with --dataset; default test)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N"
    )
    parser.set_defaults(run=run_segment)


@dataclass(frozen=True)
class Source:
    """One image to segment.

    Attributes:
        name: image file name (the output files are named by its stem).
        path: the image file.
        apply_exif: rotate by the EXIF orientation tag when decoding.
    """

    name: str
    path: Path
    apply_exif: bool = True


@dataclass
class SegmentSummary:
    """What ``summary.json`` holds (totals over the images segmented by this run; ``seconds``
    is their wall time from reading the file to writing the label map)."""

    checkpoint: str
    which: str
    count_threshold: float
    images: int = 0
    already_done: int = 0
    heads: int = 0
    seconds: float = 0.0
    network_s: float = 0.0
    post_s: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)


def image_sources(path: str | Path) -> list[Source]:
    """An image file, or the images of a folder (natural name order, not recursive).

    Raises:
        DataError: the path does not exist.
    """
    from xmask.data.image_io import IMAGE_SUFFIXES
    from xmask.data.readers import natural_key
    from xmask.errors import DataError

    path = Path(path).expanduser()
    if path.is_file():
        return [Source(path.name, path)]
    if not path.is_dir():
        raise DataError(path, "no such image file or folder")
    files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return [Source(p.name, p) for p in sorted(files, key=lambda p: natural_key(p.name))]


def dataset_sources(dataset: str, root: str | Path, split: str) -> list[Source]:
    """The images of a dataset split (their ground truth is not read)."""
    from xmask.data.readers import open_dataset

    opened = open_dataset(dataset, root, split)
    return [Source(item.name, item.image, opened.apply_exif) for item in opened.items]


def _paths(out: Path, stem: str) -> tuple[Path, Path, Path]:
    """``(mask, points, overlay)`` files of one image."""
    return (
        out / "masks" / f"{stem}.png",
        out / "points" / f"{stem}.txt",
        out / "overlays" / f"{stem}.png",
    )


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def segment_sources(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | Path,
    *,
    checkpoint: str = "",
    which: str = "",
    progress: bool = True,
) -> SegmentSummary:
    """Segment every source into ``out`` (layout in the module docstring); resumable.

    Args:
        predictor: a predictor whose model has a mask head.
        sources: the images, in output order.
        out: the output folder.
        checkpoint: the weights' path, recorded in the summary.
        which: ``"teacher"`` or ``"student"``, recorded in the summary.
        progress: show a tqdm bar on stderr.

    Returns:
        The summary, also written to ``out/summary.json``.

    Raises:
        UsageError: the predictor's model has no mask head.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from xmask.annotate.coco import label_maps_to_coco, write_coco
    from xmask.data.image_io import atomic_write_bytes, load_image, save_label_map
    from xmask.data.points_io import write_points_txt
    from xmask.errors import DataError, UsageError

    if not predictor.has_masks:
        raise UsageError("xmask segment needs a model with a mask head")
    out = Path(out)
    summary = SegmentSummary(checkpoint, which, predictor.count_threshold)
    owners: dict[str, str] = {}
    bar = tqdm(sources, desc="segment", unit="img", disable=not progress)
    for source in bar:
        stem = Path(source.name).stem
        if owners.setdefault(stem, source.name) != source.name:
            problem = f"same output name {stem!r} as {owners[stem]}"
            _skip(summary, source, problem)
            continue
        mask_path, points_path, overlay_path = _paths(out, stem)
        if mask_path.is_file() and points_path.is_file() and overlay_path.is_file():
            summary.already_done += 1
            continue
        start = time.perf_counter()
        try:
            image = load_image(source.path, apply_exif=source.apply_exif).array
        except DataError as err:
            _skip(summary, source, str(err))
            continue
        prediction = predictor(image)
        assert prediction.labels is not None
        if len(prediction.points) > np.iinfo(np.uint16).max:
            _skip(summary, source, f"{len(prediction.points)} heads do not fit a 16-bit map")
            continue
        write_points_txt(points_path, prediction.points)
        atomic_write_bytes(overlay_path, _png_bytes(prediction.overlay()))
        save_label_map(mask_path, prediction.labels)
        summary.images += 1
        summary.heads += len(prediction.points)
        summary.seconds += time.perf_counter() - start
        summary.network_s += prediction.network_s
        summary.post_s += prediction.post_s
        bar.set_postfix(heads=summary.heads, refresh=False)
    bar.close()
    write_coco(out / "annotations.json", label_maps_to_coco(_finished(sources, out)))
    atomic_write_bytes(out / "summary.json", json.dumps(asdict(summary), indent=2).encode())
    return summary


def _skip(summary: SegmentSummary, source: Source, problem: str) -> None:
    log.warning("skipped %s: %s", source.name, problem)
    summary.skipped.append({"name": source.name, "problem": problem})


def _finished(sources: Sequence[Source], out: Path) -> Iterator[ImageRecord]:
    """The records of every finished image of ``sources`` in ``out``, read back from disk."""
    import numpy as np

    from xmask.annotate.coco import ImageRecord
    from xmask.data.image_io import load_label_map
    from xmask.data.points_io import read_txt_points

    seen: set[str] = set()
    for source in sources:
        stem = Path(source.name).stem
        mask_path, points_path, _ = _paths(out, stem)
        if stem in seen or not (mask_path.is_file() and points_path.is_file()):
            continue
        seen.add(stem)
        points = read_txt_points(points_path).astype(np.float32)
        yield ImageRecord(source.name, points, load_label_map(mask_path))


def _default_out(args: argparse.Namespace) -> Path:
    if args.dataset is not None:
        return Path(f"segment-{args.dataset}-{args.split}")
    return Path(f"segment-{Path(args.source).stem}")


def run_segment(args: argparse.Namespace) -> int:
    """``xmask segment``."""
    from xmask.errors import UsageError
    from xmask.predictor import Predictor

    if (args.source is None) == (args.dataset is None):
        raise UsageError("xmask segment needs either SOURCE or --dataset (with --root)")
    if args.dataset is not None and args.root is None:
        raise UsageError("xmask segment --dataset needs --root")
    if args.dataset is not None:
        sources = dataset_sources(args.dataset, args.root, args.split)
    else:
        sources = image_sources(args.source)
    if not sources:
        raise UsageError(f"{args.source or args.root}: no images to segment")
    predictor = Predictor.load(args.checkpoint, args.device, args.which, args.threshold)
    if not predictor.has_masks:
        raise UsageError(
            f"{args.checkpoint}: this model has no mask head (a Stage-1 run); `xmask evaluate` "
            "gives its counts"
        )
    out = Path(args.out) if args.out else _default_out(args)
    summary = segment_sources(
        predictor, sources, out, checkpoint=str(args.checkpoint), which=args.which
    )
    print(
        f"{summary.images} images segmented ({summary.already_done} already done), "
        f"{summary.heads:,} heads, {summary.seconds:.1f} s; {len(summary.skipped)} skipped → {out}"
    )
    return EXIT_SKIPPED if summary.skipped else EXIT_OK
