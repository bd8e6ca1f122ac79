"""The output folder of many images: what to write, when a finished image may be kept, and the
summary of the folder (the images are predicted by :mod:`xmask.apps.images`).

Output folder ``OUT/`` (every file written atomically; ``NAME`` is the source's output name,
:mod:`xmask.apps.sources`, which may hold sub-folders such as ``100/IMG_1``):

- ``predictions/NAME.json``: image, size, count, head points ``[x, y]`` with their scores and
  mask areas, the region if any, the heads per zone (``zones``: ``{NAME: count}``, with zones,
  :mod:`xmask.apps.zones`), the model, and the fingerprint of the source file and of the
  settings it was made with; written last;
- ``points/NAME.txt``: the head points, ``x y`` per line, in label order;
- ``masks/NAME.png``: 16-bit instance label map (0 background, ``k`` = the ``k``-th point);
  models with a mask head only, not with ``masks=False``;
- ``overlays/NAME.jpg`` (``.png`` with ``overlay_format="png"``): the image with a colour per
  instance, a dot per head and the count; not with ``overlay=False``;
- ``previews/NAME.png``: with ``preview=True``, the label map in colour (the 16-bit map looks
  black in viewers);
- ``heatmaps/NAME.png``: with ``heatmap=True``, the head density over the image
  (:func:`xmask.data.render.heatmap_picture`);
- ``annotations.json``: COCO instances with RLE masks of every finished image of the folder;
- ``counts.csv``: ``image,count`` and a ``zone:NAME`` column per zone, a row per finished
  image of the folder;
- ``summary.json``: the images, videos and heads of the whole folder (and per zone), and what
  this call did (predicted, already done, redone, skipped, seconds, the summary of each live
  source read).

Re-runs: an image is kept only when its ``predictions/NAME.json`` holds the same fingerprint:
the source file's path, size and modification time, and every setting that changes the
result (the weights' SHA-256 and network, the ONNX graph's SHA-256 with the onnx backend, count
rule, segmentation constants, tiling, region, zones, which files are written). Anything else is
redone; ``force`` redoes everything. A name is claimed by its source file
(``OUT/.owners/NAME``) before anything is written, so another file of the same name, from this
call, a later one or one running at the same time, is reported and skipped instead of
overwriting or mixing with it.

Videos go to ``videos/`` (:mod:`xmask.apps.video`), live sources to ``streams/``
(:mod:`xmask.apps.stream`). Unreadable images are reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmask.annotate.coco import ImageRecord, label_maps_to_coco, write_coco
from xmask.apps.sources import Source
from xmask.apps.zones import Zone, count_row, count_table, zone_counts, zones_setting
from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import jpeg_bytes, load_label_map, png_bytes, save_label_map
from xmask.data.points_io import read_txt_points, write_points_txt
from xmask.data.render import DensityGrid, colour_labels, heatmap_picture, heatmap_sigma
from xmask.errors import DataError, UsageError
from xmask.inference.loading import weights_digest
from xmask.inference.prediction import Prediction
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """What ``summary.json`` holds.

    Attributes:
        model: the model of this call.
        count_rule: its count rule, in words.
        backend: what ran its network: ``torch``, ``onnx`` or ``onnx-int8`` (``--backend
            auto`` picks one).
        images: finished images in the output folder (every call's).
        videos: finished videos in the output folder.
        heads: heads of the finished images of the folder.
        zones: heads per zone over the finished images of the folder, by zone name.
        predicted: images predicted by this call (new, changed or forced).
        videos_predicted: videos predicted by this call.
        already_done: images and videos of this call kept from an earlier one.
        redone: of ``predicted``, images whose earlier result was out of date.
        seconds: wall time of this call's images, from the first read to the last output.
        network_s: seconds in the network over this call's images and videos.
        post_s: seconds after it.
        skipped: ``{"name", "problem"}`` of every item of this call left out.
        streams: the :class:`~xmask.apps.stream.StreamSummary` of each live source of this call.
    """

    model: str
    count_rule: str
    backend: str = "torch"
    images: int = 0
    videos: int = 0
    heads: int = 0
    zones: dict[str, int] = field(default_factory=dict)
    predicted: int = 0
    videos_predicted: int = 0
    already_done: int = 0
    redone: int = 0
    seconds: float = 0.0
    network_s: float = 0.0
    post_s: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, name: str, problem: str) -> None:
        """Record (and log) an item left out."""
        log.warning("skipped %s: %s", name, problem)
        self.skipped.append({"name": name, "problem": problem})


@dataclass(frozen=True)
class OutputOptions:
    """Which files an image gets (part of the settings a re-run compares).

    Attributes:
        masks: write ``masks/NAME.png`` (and so ``annotations.json``).
        overlay: write the overlay picture.
        overlay_format: ``"png"`` or ``"jpg"``.
        preview: write ``previews/NAME.png``, the label map in colour.
        heatmap: write ``heatmaps/NAME.png`` (videos: one over all their frames).
        heatmap_sigma: the heatmap's Gaussian in pixels (None:
            :func:`~xmask.data.render.heatmap_sigma`'s default).
    """

    masks: bool = True
    overlay: bool = True
    overlay_format: str = "jpg"
    preview: bool = False
    heatmap: bool = False
    heatmap_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.overlay_format not in ("png", "jpg"):
            raise UsageError(f"overlay format must be png or jpg, got {self.overlay_format!r}")
        sigma = self.heatmap_sigma
        if sigma is not None and not (self.heatmap and 0 < sigma < float("inf")):
            raise UsageError(f"--heatmap-sigma needs --heatmap and a positive number, got {sigma}")

    def heatmap_grid(self, size: tuple[int, int]) -> DensityGrid:
        """An empty density grid for an image of ``size`` ``(H, W)``."""
        return DensityGrid(size, heatmap_sigma(size, self.heatmap_sigma))


@dataclass(frozen=True)
class ImageOutputs:
    """The files of one image in an output folder (``stem``: its output name)."""

    out: Path
    stem: str
    options: OutputOptions = OutputOptions()

    @property
    def prediction(self) -> Path:
        """``predictions/NAME.json``, written last."""
        return self.out / "predictions" / f"{self.stem}.json"

    @property
    def points(self) -> Path:
        """``points/NAME.txt``."""
        return self.out / "points" / f"{self.stem}.txt"

    @property
    def mask(self) -> Path:
        """``masks/NAME.png``."""
        return self.out / "masks" / f"{self.stem}.png"

    @property
    def overlay(self) -> Path:
        """``overlays/NAME.jpg`` (or ``.png``)."""
        return self.out / "overlays" / f"{self.stem}.{self.options.overlay_format}"

    @property
    def preview(self) -> Path:
        """``previews/NAME.png``."""
        return self.out / "previews" / f"{self.stem}.png"

    @property
    def heatmap(self) -> Path:
        """``heatmaps/NAME.png``."""
        return self.out / "heatmaps" / f"{self.stem}.png"

    def every_output(self) -> tuple[Path, ...]:
        """Every file an image may have, whatever the options."""
        overlays = (self.out / "overlays" / f"{self.stem}.{f}" for f in ("png", "jpg"))
        return (self.prediction, self.mask, *overlays, self.preview, self.heatmap)

    @property
    def owner(self) -> Path:
        """``.owners/NAME``: the source file that claimed the name."""
        return self.out / ".owners" / self.stem


def settings_fingerprint(
    predictor: Predictor,
    which: str,
    roi: np.ndarray | None,
    options: OutputOptions | None = None,
    zones: Sequence[Zone] = (),
) -> str:
    """SHA-256 of every setting that changes a prediction or its files: the weights (their
    SHA-256, or of the network's tensors for a predictor not loaded from files) and the network
    of a run, the ONNX graph (the onnx backend), count rule, scale rule, segmentation
    constants and grid, tiling, region, output options and zones."""
    rule = predictor.count_rule
    scale = asdict(predictor.scale)
    if scale["locate_enlarge"] is None:  # no locating pass: the fingerprints of before it existed
        del scale["locate_enlarge"]
    settings = {
        "weights": _weights_of(predictor),
        "which": which,
        "count_rule": [rule.threshold, rule.split, rule.dense_threshold],
        "scale": scale,
        "segment": asdict(predictor.segment_config),
        "tiling": [predictor.max_pixels, predictor.tile, predictor.overlap, predictor.core],
        "roi": None if roi is None else np.asarray(roi, dtype=np.float64).tolist(),
        "outputs": asdict(options or OutputOptions()),
    }
    if zones:  # only with zones: earlier fingerprints without them stay valid
        settings["zones"] = zones_setting(zones)
    if predictor.mask_grid != 1:  # only then: full-resolution fingerprints stay as before
        settings["mask_grid"] = predictor.mask_grid
    if predictor.onnx is not None:  # only then: the torch backend's fingerprints stay as before
        settings["onnx"] = predictor.onnx.sha256
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _weights_of(predictor: Predictor) -> str:
    if predictor.source is not None:
        return weights_digest(predictor.source)
    digest = hashlib.sha256()
    for name, tensor in sorted(predictor.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def source_fingerprint(source: Source) -> dict[str, Any]:
    """The source file as a re-run compares it: absolute path, size, modification time."""
    stat = source.path.stat()
    return {
        "path": str(source.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "apply_exif": source.apply_exif,
    }


def prediction_record(
    prediction: Prediction, name: str, model: str, zones: Sequence[Zone] = ()
) -> dict[str, Any]:
    """The JSON of one prediction (``predictions/NAME.json``), without its fingerprint."""
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
    if zones:
        record["zones"] = zone_counts(prediction, zones)
    return record


def write_image_outputs(files: ImageOutputs, prediction: Prediction, record: dict) -> None:
    """Remove the image's earlier outputs, then write its points, the label map, overlay,
    preview and heatmap its options ask for, and, last, the prediction JSON.

    Raises:
        DataError: more heads than a 16-bit label map holds.
    """

    options = files.options
    labels = prediction.labels if options.masks else None
    if labels is not None and len(prediction.points) > np.iinfo(np.uint16).max:
        raise DataError(files.mask, f"{len(prediction.points)} heads do not fit a 16-bit map")
    for old in files.every_output():
        old.unlink(missing_ok=True)
    write_points_txt(files.points, prediction.points)
    if labels is not None:
        save_label_map(files.mask, labels)
    if options.overlay:
        picture = prediction.overlay()
        encoded = jpeg_bytes(picture) if options.overlay_format == "jpg" else png_bytes(picture)
        atomic_write_bytes(files.overlay, encoded)
    if options.preview and prediction.labels is not None:
        preview = colour_labels(prediction.labels, len(prediction.points))
        atomic_write_bytes(files.preview, png_bytes(preview))
    if options.heatmap and prediction.image is not None:
        grid = options.heatmap_grid(prediction.size)
        grid.add(prediction.points)
        heatmap = heatmap_picture(prediction.image, grid.density())
        atomic_write_bytes(files.heatmap, png_bytes(heatmap))
    atomic_write_bytes(files.prediction, (json.dumps(record) + "\n").encode("utf-8"))


def read_record(path: Path) -> dict[str, Any] | None:
    """A prediction JSON, or None when it is missing or unreadable (it is then redone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def claim(files: ImageOutputs, source: Source, force: bool) -> str | None:
    """Claim the output name for ``source``; returns the other file that holds it, if any
    (``force`` takes the name over)."""
    mine = str(source.path.resolve())
    files.owner.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(files.owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        holder = files.owner.read_text(encoding="utf-8")
        if holder in (mine, "") or force:
            atomic_write_bytes(files.owner, mine.encode("utf-8"))
            return None
        return holder
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(mine)
    return None


def finish(summary: BatchSummary, out: str | Path) -> BatchSummary:
    """Count the output folder's finished images, heads (also per zone) and videos into
    ``summary``; write ``annotations.json`` (COCO, every finished image with a label map),
    ``counts.csv`` and ``summary.json``."""

    out = Path(out)
    records = []
    rows = []
    summary.images = summary.heads = 0
    for files, record in finished_images(out):
        rows.append(count_row(record))
        summary.images += 1
        summary.heads += len(record.get("points", []))
        if files.mask.is_file():
            points = read_txt_points(files.points).astype(np.float32)
            records.append(ImageRecord(str(record["image"]), points, load_label_map(files.mask)))
    summary.videos = sum(1 for _ in (out / "videos").rglob("*.json"))
    table, summary.zones = count_table(rows)
    atomic_write_bytes(out / "counts.csv", table.encode("utf-8"))
    if records:
        write_coco(out / "annotations.json", label_maps_to_coco(records))
    else:
        (out / "annotations.json").unlink(missing_ok=True)
    atomic_write_bytes(out / "summary.json", json.dumps(asdict(summary), indent=2).encode())
    return summary


def finished_images(out: Path) -> Iterator[tuple[ImageOutputs, dict[str, Any]]]:
    """Every finished image of an output folder (a readable prediction JSON), by name."""
    folder = out / "predictions"
    paths = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    for path in paths:
        record = read_record(path)
        if record is None or "image" not in record:
            log.warning("%s: unreadable prediction, left out of the summary", path)
            continue
        yield ImageOutputs(out, path.relative_to(folder).with_suffix("").as_posix()), record
