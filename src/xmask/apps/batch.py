"""Prediction over many images: what to read, what to write, and resuming.

Output folder ``OUT/`` (every file written atomically):

- ``predictions/STEM.json``: image, size, count, head points ``[x, y]`` with their scores and
  mask areas, the region if any, the model and its count threshold; written last, so an image
  is done when it exists and a re-run skips it;
- ``points/STEM.txt``: the head points, ``x y`` per line, in label order;
- ``masks/STEM.png``: 16-bit instance label map (0 background, ``k`` = the ``k``-th point);
  models with a mask head only;
- ``overlays/STEM.png``: the image with a colour per instance, a dot per head and the count;
- ``annotations.json``: COCO instances with RLE masks, one per head with its point as
  keypoint, rebuilt at the end from every finished image (models with a mask head);
- ``summary.json``: images and heads of this run, images already done, seconds, skipped items.

Videos go to ``videos/`` (:mod:`xmask.apps.video`). Unreadable images are reported and skipped.
"""

from __future__ import annotations

import glob
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmask.annotate.coco import ImageRecord, label_maps_to_coco, write_coco
from xmask.apps.roi import restrict
from xmask.data.image_io import (
    IMAGE_SUFFIXES,
    atomic_write_bytes,
    load_image,
    load_label_map,
    png_bytes,
    save_label_map,
)
from xmask.data.points_io import read_txt_points, write_points_txt
from xmask.data.readers import natural_key, open_dataset
from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class Source:
    """One image or video to predict on.

    Attributes:
        name: file name (outputs are named by its stem).
        path: the file.
        apply_exif: rotate an image by its EXIF orientation tag when decoding.
    """

    name: str
    path: Path
    apply_exif: bool = True

    @property
    def is_video(self) -> bool:
        """The file is a video (by its suffix)."""
        return self.path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class BatchSummary:
    """What ``summary.json`` holds (totals over the images predicted by this run; ``seconds``
    is their wall time from reading the file to writing the last output)."""

    model: str
    count_rule: str
    images: int = 0
    videos: int = 0
    already_done: int = 0
    heads: int = 0
    seconds: float = 0.0
    network_s: float = 0.0
    post_s: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, name: str, problem: str) -> None:
        """Record (and log) an item left out."""
        log.warning("skipped %s: %s", name, problem)
        self.skipped.append({"name": name, "problem": problem})


def _media(paths: Sequence[Path]) -> list[Path]:

    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files = [p for p in paths if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(files, key=lambda p: natural_key(str(p)))


def find_sources(specs: Sequence[str | Path]) -> list[Source]:
    """The images and videos named by files, folders (not recursive) or glob patterns
    (``**`` recurses), in natural order within each.

    Raises:
        DataError: a path that does not exist, or a pattern that matches no image or video.
    """
    sources: list[Source] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _media(list(path.iterdir()))
        elif glob.has_magic(str(spec)):
            found = _media([Path(p) for p in glob.glob(str(path), recursive=True)])
            if not found:
                raise DataError(path, "the pattern matches no image or video")
        else:
            raise DataError(path, "no such file, folder or pattern")
        sources += [Source(p.name, p) for p in found]
    return sources


def dataset_sources(dataset: str, root: str | Path, split: str) -> list[Source]:
    """The images of a dataset split (their ground truth is not read)."""

    opened = open_dataset(dataset, root, split)
    return [Source(item.name, item.image, opened.apply_exif) for item in opened.items]


@dataclass(frozen=True)
class ImageOutputs:
    """The files of one image in an output folder."""

    out: Path
    stem: str

    @property
    def prediction(self) -> Path:
        """``predictions/STEM.json``, written last."""
        return self.out / "predictions" / f"{self.stem}.json"

    @property
    def points(self) -> Path:
        """``points/STEM.txt``."""
        return self.out / "points" / f"{self.stem}.txt"

    @property
    def mask(self) -> Path:
        """``masks/STEM.png``."""
        return self.out / "masks" / f"{self.stem}.png"

    @property
    def overlay(self) -> Path:
        """``overlays/STEM.png``."""
        return self.out / "overlays" / f"{self.stem}.png"


def prediction_record(prediction: Prediction, name: str, model: str) -> dict[str, Any]:
    """The JSON of one prediction (``predictions/STEM.json``)."""
    record: dict[str, Any] = {
        "image": name,
        "height": prediction.size[0],
        "width": prediction.size[1],
        "count": prediction.count,
        "points": np.round(prediction.points.astype(np.float64), 2).tolist(),
        "scores": np.round(prediction.scores.astype(np.float64), 4).tolist(),
        "areas": None if prediction.areas is None else prediction.areas.tolist(),
        "model": model,
        "seconds": {"network": prediction.network_s, "post": prediction.post_s},
    }
    if prediction.roi is not None:
        record["roi"] = prediction.roi.tolist()
    return record


def write_image_outputs(files: ImageOutputs, prediction: Prediction, record: dict) -> None:
    """Points, label map (if any), overlay, then the prediction JSON (the done marker).

    Raises:
        DataError: more heads than a 16-bit label map holds.
    """

    if prediction.labels is not None and len(prediction.points) > np.iinfo(np.uint16).max:
        raise DataError(files.mask, f"{len(prediction.points)} heads do not fit a 16-bit map")
    write_points_txt(files.points, prediction.points)
    if prediction.labels is not None:
        save_label_map(files.mask, prediction.labels)
    atomic_write_bytes(files.overlay, png_bytes(prediction.overlay()))
    atomic_write_bytes(files.prediction, (json.dumps(record) + "\n").encode("utf-8"))


def predict_images(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | Path,
    *,
    model: str = "",
    roi: np.ndarray | None = None,
    summary: BatchSummary | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Predict every image source into ``out`` (layout in the module docstring); resumable.

    Args:
        predictor: the model.
        sources: images, in output order (videos are left to :mod:`xmask.apps.video`).
        out: the output folder.
        model: the model's name or path, recorded in the outputs.
        roi: ``K×2`` ``(x, y)`` polygon to count inside (:mod:`xmask.apps.roi`), or None.
        summary: totals to add to (a new one when None).
        progress: show a tqdm bar on stderr.

    Returns:
        The summary (``summary.json`` is written by :func:`finish`).
    """

    out = Path(out)
    summary = summary or BatchSummary(model, predictor.count_rule.describe())
    owners: dict[str, str] = {}
    bar = tqdm(sources, desc="predict", unit="img", disable=not progress)
    for source in bar:
        stem = Path(source.name).stem
        if owners.setdefault(stem, str(source.path)) != str(source.path):
            summary.skip(source.name, f"same output name {stem!r} as {owners[stem]}")
            continue
        files = ImageOutputs(out, stem)
        if files.prediction.is_file():
            summary.already_done += 1
            continue
        start = time.perf_counter()
        try:
            prediction = predictor(load_image(source.path, apply_exif=source.apply_exif).array)
            if roi is not None:
                prediction = restrict(prediction, roi)
            record = prediction_record(prediction, source.name, model)
            write_image_outputs(files, prediction, record)
        except (DataError, UsageError) as err:
            summary.skip(source.name, str(err))
            continue
        summary.images += 1
        summary.heads += len(prediction.points)
        summary.seconds += time.perf_counter() - start
        summary.network_s += prediction.network_s
        summary.post_s += prediction.post_s
        bar.set_postfix(heads=summary.heads, refresh=False)
    bar.close()
    return summary


def finish(summary: BatchSummary, sources: Sequence[Source], out: str | Path) -> None:
    """Write ``annotations.json`` (COCO, from every finished image with a label map) and
    ``summary.json``."""

    out = Path(out)
    records = list(_finished(sources, out))
    if records:
        write_coco(out / "annotations.json", label_maps_to_coco(records))
    atomic_write_bytes(out / "summary.json", json.dumps(asdict(summary), indent=2).encode())


def _finished(sources: Sequence[Source], out: Path) -> Iterator[ImageRecord]:
    """The records of every finished image of ``sources`` with a label map, read back."""

    seen: set[str] = set()
    for source in sources:
        files = ImageOutputs(out, Path(source.name).stem)
        if files.stem in seen or not (files.prediction.is_file() and files.mask.is_file()):
            continue
        seen.add(files.stem)
        points = read_txt_points(files.points).astype(np.float32)
        yield ImageRecord(source.name, points, load_label_map(files.mask))
