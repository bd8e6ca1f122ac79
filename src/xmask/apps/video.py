"""Prediction on a video: an annotated video, a per-frame count table and a count plot.

For ``OUT/videos/`` and a video ``NAME.mp4``:

- ``NAME.mp4``: every predicted frame drawn as :meth:`xmask.inference.prediction.Prediction.overlay`
  (instances, head dots, the count), H.264 at the source rate divided by ``every``;
- ``NAME.csv``: ``frame,time_s,count`` per predicted frame, and a ``zone:NAME`` column of
  heads per zone with zones (:mod:`xmask.apps.zones`);
- ``NAME-counts.png``: the count over time;
- ``NAME-heatmap.png``: with ``heatmap=True`` in the output ``options``, the head density of all
  predicted frames together over the last of them (:func:`xmask.data.render.heatmap_picture`;
  beside the video rather than in ``heatmaps/``, so that an image of the same name keeps its
  own);
- ``NAME.json``: the fingerprint of the source file and the settings (as for images,
  :mod:`xmask.apps.batch`, with ``every``), written last: a video is done when it exists and
  matches; an interrupted or changed video is redone from its start.

Needs PyAV (the ``video`` extra: ``pip install 'xmask-crowd[video]'``), and matplotlib for the
plot.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmask.apps.batch import OutputOptions, read_record, source_fingerprint
from xmask.apps.roi import restrict
from xmask.apps.sources import Source
from xmask.apps.zones import Zone, zone_column, zone_counts
from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import png_bytes
from xmask.data.render import DensityGrid, heatmap_picture
from xmask.errors import DataError, MissingDependencyError, UsageError
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)

CODEC = "libx264"


@dataclass
class VideoResult:
    """One video's predictions.

    Attributes:
        frames: frame indices predicted (every ``every``-th decoded frame, from 0).
        times: their presentation times in seconds.
        counts: their head counts.
        zones: per zone name, its head count in each predicted frame.
        network_s: seconds in the network over all frames.
        post_s: seconds after the network over all frames.
    """

    frames: list[int]
    times: list[float]
    counts: list[int]
    zones: dict[str, list[int]] = field(default_factory=dict)
    network_s: float = 0.0
    post_s: float = 0.0


@dataclass(frozen=True)
class VideoOutputs:
    """The files of one video in an output folder."""

    out: Path
    stem: str

    @property
    def video(self) -> Path:
        """``videos/STEM.mp4``."""
        return self.out / "videos" / f"{self.stem}.mp4"

    @property
    def table(self) -> Path:
        """``videos/STEM.csv``, written last."""
        return self.out / "videos" / f"{self.stem}.csv"

    @property
    def plot(self) -> Path:
        """``videos/STEM-counts.png``."""
        return self.out / "videos" / f"{self.stem}-counts.png"

    @property
    def heatmap(self) -> Path:
        """``videos/STEM-heatmap.png``."""
        return self.out / "videos" / f"{self.stem}-heatmap.png"

    @property
    def record(self) -> Path:
        """``videos/STEM.json``, written last."""
        return self.out / "videos" / f"{self.stem}.json"


def _import_av() -> Any:
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("video input needs PyAV", "video") from err
    return av


def predict_video(
    predictor: Predictor,
    source: Source,
    out: str | Path,
    *,
    every: int = 1,
    roi: np.ndarray | None = None,
    zones: Sequence[Zone] = (),
    options: OutputOptions | None = None,
    settings: str = "",
    force: bool = False,
    progress: bool = True,
) -> VideoResult | None:
    """Predict every ``every``-th frame of a video and write its outputs (module docstring).

    Args:
        zones: named polygons to count heads in per frame.
        options: output options; of them, ``heatmap`` and ``heatmap_sigma`` apply.
        settings: the fingerprint of the prediction settings
            (:func:`xmask.apps.batch.settings_fingerprint`).
        force: redo the video even when its outputs are up to date.

    Returns:
        The result, or None when the video was already done.

    Raises:
        DataError: an unreadable video or one without a video stream.
        UsageError: PyAV is missing, or ``every < 1``.
    """
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")
    files = VideoOutputs(Path(out), source.stem)
    fingerprint = {"source": source_fingerprint(source), "settings": settings, "every": every}
    earlier = read_record(files.record)
    if not force and earlier is not None and earlier.get("fingerprint") == fingerprint:
        return None
    files.record.unlink(missing_ok=True)
    files.heatmap.unlink(missing_ok=True)
    heat = options if options is not None and options.heatmap else None
    av = _import_av()
    files.video.parent.mkdir(parents=True, exist_ok=True)
    partial = files.video.with_name(f".{files.video.name}.part")
    try:
        result, picture = _run(
            av, predictor, source.path, partial, every, roi, zones, heat, progress
        )
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        partial.unlink(missing_ok=True)
        raise DataError(source.path, f"unreadable video ({err})") from err
    os.replace(partial, files.video)
    _write_plot(files.plot, result, source.name)
    _write_table(files.table, result)
    if picture is not None:
        atomic_write_bytes(files.heatmap, png_bytes(picture))
    record = {"video": source.name, "frames": len(result.frames), "fingerprint": fingerprint}
    atomic_write_bytes(files.record, (json.dumps(record) + "\n").encode("utf-8"))
    return result


def _run(
    av: Any,
    predictor: Predictor,
    path: Path,
    partial: Path,
    every: int,
    roi: np.ndarray | None,
    zones: Sequence[Zone],
    heat: OutputOptions | None,
    progress: bool,
) -> tuple[VideoResult, np.ndarray | None]:
    """The frames' result, and the heatmap picture of ``heat`` (None: no heatmap)."""
    result = VideoResult([], [], [], {zone.name: [] for zone in zones})
    grid: DensityGrid | None = None
    background: np.ndarray | None = None
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(path, "no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or 25) / every
        total = (stream.frames or 0) // every or None
        with av.open(str(partial), "w", format="mp4") as output:
            encoder = None
            bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                prediction = predictor(frame.to_ndarray(format="rgb24"))
                if roi is not None:
                    prediction = restrict(prediction, roi)
                picture = prediction.overlay()
                if encoder is None:
                    encoder = _encoder(output, rate, picture.shape)
                even = picture[: encoder.height, : encoder.width]
                for packet in encoder.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
                    output.mux(packet)
                result.frames.append(index)
                result.times.append(float(frame.time or index / float(rate * every)))
                result.counts.append(prediction.count)
                for name, count in zone_counts(prediction, zones).items():
                    result.zones[name].append(count)
                if heat is not None:
                    grid = grid or heat.heatmap_grid(prediction.size)
                    grid.add(prediction.points)
                    background = prediction.image
                result.network_s += prediction.network_s
                result.post_s += prediction.post_s
                bar.update()
                bar.set_postfix(count=prediction.count, refresh=False)
            bar.close()
            if encoder is None:
                raise DataError(path, "no frame could be decoded")
            for packet in encoder.encode():
                output.mux(packet)
    if grid is None or background is None:
        return result, None
    return result, heatmap_picture(background, grid.density())


def _encoder(output: Any, rate: Any, shape: tuple[int, ...]) -> Any:
    """An H.264 stream for frames of ``shape`` (cropped to even sides, as yuv420p needs)."""
    stream = output.add_stream(CODEC, rate=rate)
    stream.width, stream.height = shape[1] - shape[1] % 2, shape[0] - shape[0] % 2
    stream.pix_fmt = "yuv420p"
    return stream


def _write_table(path: Path, result: VideoResult) -> None:

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["frame", "time_s", "count", *map(zone_column, result.zones)])
    columns = (result.frames, result.times, result.counts, *result.zones.values())
    for frame, time_s, *counts in zip(*columns, strict=True):
        writer.writerow([frame, f"{time_s:.3f}", *counts])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def _write_plot(path: Path, result: VideoResult, title: str) -> None:
    """The count over time as a PNG (skipped, with a warning, without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning(
            "no count plot: %s", MissingDependencyError("matplotlib is not installed", "video")
        )
        return

    figure = Figure(figsize=(8, 3), dpi=100)
    axis = figure.subplots()
    axis.plot(result.times, result.counts, color="tab:red")
    axis.set(xlabel="time (s)", ylabel="heads", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
