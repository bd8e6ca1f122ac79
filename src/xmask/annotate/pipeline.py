"""Annotating a dataset split: one label map per image, written as it goes, resumable.

Output folder ``DIR``:

- ``masks/STEM.png``: 16-bit instance label map (0 background, ``k`` = the ``k``-th point);
- ``points/STEM.txt``: the points, ``x y`` per line, in label order;
- ``overlays/STEM.png``: a preview, the image with a colour per mask, a dot per head and the
  count (not with ``overlays=False``);
- ``annotations.json``: COCO instances with RLE masks, one annotation per head
  (:mod:`xmask.annotate.coco`), rebuilt from the two folders at the end, for every finished
  image of the folder (this run's and earlier ones');
- ``summary.json``: this run's images, heads, empty masks, fallbacks, seconds and skipped
  items; the folder's images and heads; and the file name of every image of the folder
  (``files``: output name → image file name, merged over runs).

An image counts as done when both its files exist (each is written atomically, the points
first), so a re-run skips finished images. Bad items are reported and skipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from xmask.annotate.coco import ImageRecord, OverlapRule, label_maps_to_coco, read_coco, write_coco
from xmask.annotate.coco_import import coco_to_label_maps
from xmask.annotate.edp_sam import sam_backend
from xmask.annotate.fastsam import fastsam_backend
from xmask.annotate.fastsam_model import FastSamConfig
from xmask.annotate.sam_model import SamConfig
from xmask.annotate.superpixel import SuperpixelConfig, annotate_superpixel
from xmask.data.files import atomic_write_bytes, distinct_stems, remove_stale_temporaries
from xmask.data.image_io import load_label_map, png_bytes, save_label_map
from xmask.data.points_io import read_txt_points, write_points_txt
from xmask.data.readers import CrowdDataset, Item, natural_key
from xmask.data.render import overlay_picture
from xmask.errors import DataError, UsageError
from xmask.geometry.labels import MaskResult

log = logging.getLogger(__name__)

Backend = Callable[[np.ndarray, np.ndarray], MaskResult]
"""``(image H×W×3 uint8, points N×2 float32 (x, y)) → MaskResult``."""


BACKENDS = ("superpixel", "sam", "sam-point", "fastsam", "fastsam-nnec")


def build_backend(
    name: str, sam: SamConfig | None = None, fastsam: FastSamConfig | None = None
) -> Backend:
    """The annotation backend called ``name``: ``superpixel`` (no SAM), ``sam`` (EDP-SAM:
    point + superpixel prompts, clipped to NNEC), ``sam-point`` (the point-only baseline),
    ``fastsam`` / ``fastsam-nnec`` (the paper's FastSAM baselines: smallest candidate mask
    covering each point, without / with NNEC clipping and circle fallback). The SAM ones need
    the ``sam`` extra and ``sam``; the FastSAM ones the ``fastsam`` extra and ``fastsam``
    (:class:`~xmask.errors.MissingDependencyError` without it)."""
    if name == "superpixel":
        cfg = SuperpixelConfig()
        return lambda image, points: annotate_superpixel(image, points, cfg)
    if name in ("sam", "sam-point"):
        cfg = sam or SamConfig()
        if name == "sam-point":
            cfg = replace(cfg, superpixel_prompt="none")
        return sam_backend(cfg)
    if name in ("fastsam", "fastsam-nnec"):
        return fastsam_backend(fastsam or FastSamConfig(), nnec=name == "fastsam-nnec")
    raise UsageError(f"unknown annotation backend {name!r}; available: {', '.join(BACKENDS)}")


@dataclass
class AnnotationSummary:
    """What ``summary.json`` holds: totals over the images annotated by this run, then the
    folder's (``folder_images``, ``folder_heads``, ``files``)."""

    backend: str
    images: int = 0
    already_done: int = 0
    heads: int = 0
    empty_masks: int = 0
    fallback_masks: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)
    folder_images: int = 0
    folder_heads: int = 0
    files: dict[str, str] = field(default_factory=dict)


def _earlier_files(out: Path) -> dict[str, str]:
    """``files`` of an earlier ``summary.json`` (empty if there is none or it is unreadable)."""
    try:
        files = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _write_folder_files(out: Path, summary: AnnotationSummary, dataset: CrowdDataset) -> None:
    """``annotations.json`` and ``summary.json`` of the whole folder."""
    files = _earlier_files(out) | {Path(item.name).stem: item.name for item in dataset.items}
    records = []
    for stem, name in sorted(files.items(), key=lambda kv: natural_key(kv[0])):
        mask_path, points_path = out / "masks" / f"{stem}.png", out / "points" / f"{stem}.txt"
        if mask_path.is_file() and points_path.is_file():
            points = read_txt_points(points_path).astype(np.float32)
            records.append(ImageRecord(name, points, load_label_map(mask_path)))
    summary.files = {Path(r.file_name).stem: r.file_name for r in records}
    summary.folder_images = len(records)
    summary.folder_heads = sum(len(r.points) for r in records)
    write_coco(out / "annotations.json", label_maps_to_coco(records))
    atomic_write_bytes(out / "summary.json", json.dumps(asdict(summary), indent=2).encode())


def _paths(out: Path, item: Item) -> tuple[Path, Path]:
    stem = Path(item.name).stem
    return out / "masks" / f"{stem}.png", out / "points" / f"{stem}.txt"


def _overlay(out: Path, item: Item) -> Path:
    return out / "overlays" / f"{Path(item.name).stem}.png"


def annotate_dataset(
    dataset: CrowdDataset,
    out: str | Path,
    backend: str,
    progress: bool = True,
    sam: SamConfig | None = None,
    fastsam: FastSamConfig | None = None,
    overlays: bool = True,
) -> AnnotationSummary:
    """Annotate every image of ``dataset`` into ``out`` (layout in the module docstring)."""
    out = Path(out)
    remove_stale_temporaries(out)
    run = build_backend(backend, sam, fastsam)
    summary = AnnotationSummary(backend=backend)
    for item in tqdm(dataset.items, desc=f"annotate ({backend})", disable=not progress):
        mask_path, points_path = _paths(out, item)
        if mask_path.is_file() and points_path.is_file():
            summary.already_done += 1
            continue
        try:
            sample = dataset.load(item)
        except DataError as err:
            log.warning("skipped %s: %s", item.name, err)
            summary.skipped.append({"name": item.name, "problem": str(err)})
            continue
        start = time.perf_counter()
        result = run(sample.image, sample.points)
        summary.seconds += time.perf_counter() - start
        if overlays:
            caption = f"{len(sample.points):,} heads"
            picture = overlay_picture(sample.image, result.labels, sample.points, caption)
            atomic_write_bytes(_overlay(out, item), png_bytes(picture))
        write_points_txt(points_path, sample.points)
        save_label_map(mask_path, result.labels)
        summary.images += 1
        summary.heads += len(sample.points)
        summary.empty_masks += result.empty
        summary.fallback_masks += int(result.fallback.sum())
    _write_folder_files(out, summary, dataset)
    return summary


def import_coco(
    coco_file: str | Path, out: str | Path, overlap: OverlapRule = "nearest"
) -> tuple[int, int]:
    """Write the label maps and points of a (corrected) COCO file into the annotation folder
    ``out``; every image is checked, and every output name found
    (:func:`xmask.data.files.distinct_stems`: ``cam1/IMG_X.jpg`` and ``cam2/IMG_X.jpg`` stay
    apart), before anything is written.

    Returns:
        ``(heads, images)`` written.

    Raises:
        DataError: an unusable COCO file, or file names that collide or leave ``out``.
    """
    maps = coco_to_label_maps(read_coco(coco_file), coco_file, overlap=overlap)
    stems = distinct_stems(list(maps), coco_file)
    out = Path(out)
    for name, image in maps.items():
        write_points_txt(out / "points" / f"{stems[name]}.txt", image.points)
        save_label_map(out / "masks" / f"{stems[name]}.png", image.labels)
    return sum(len(image.points) for image in maps.values()), len(maps)


def folder_to_coco(dataset: CrowdDataset, out: str | Path) -> dict:
    """COCO instances of every finished image of ``dataset`` in ``out`` (dataset order)."""
    out = Path(out)
    records = []
    for item in dataset.items:
        mask_path, points_path = _paths(out, item)
        if mask_path.is_file() and points_path.is_file():
            points = read_txt_points(points_path).astype(np.float32)
            records.append(ImageRecord(item.name, points, load_label_map(mask_path)))
    return label_maps_to_coco(records)
