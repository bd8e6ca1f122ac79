"""Prediction on a video: an annotated video, a per-frame count table and a count plot.

For ``OUT/videos/`` and a video ``NAME.mp4``:

- ``NAME.mp4``: every predicted frame drawn as :meth:`xmask.inference.prediction.Prediction.overlay`
  (instances, head dots, the count; the counting lines with their people in and out), H.264 at
  the source rate divided by ``every``;
- ``NAME.csv``: ``frame,time_s,count`` per predicted frame, a ``zone:NAME`` column of heads
  per zone with zones (:mod:`xmask.apps.zones`), and ``line:NAME:in``, ``line:NAME:out`` per
  counting line: the people who crossed it so far (:mod:`xmask.apps.frames`);
- ``NAME-counts.png``: the count over time;
- ``NAME-heatmap.png``: with a heatmap in the frame settings, the head density of all
  predicted frames together over the last of them (:func:`xmask.data.render.heatmap_picture`;
  beside the video rather than in ``heatmaps/``, so that an image of the same name keeps its
  own);
- ``NAME.json``: the fingerprint of the source file and the settings (as for images,
  :mod:`xmask.apps.batch`, with ``every``, and the lines and tracking with lines), and with
  lines the people in and out per line (``lines``) and the tracks started (``tracks``); written
  last: a video is done when it exists and matches; an interrupted or changed video is redone
  from its start.

Live sources (webcams, stream URLs) go through the same frames in :mod:`xmask.apps.stream`.

Needs PyAV (the ``video`` extra: ``pip install 'xmask-crowd[video]'``), and matplotlib for the
plot.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmask.apps.batch import read_record, source_fingerprint
from xmask.apps.frames import (
    AnnotatedWriter,
    Frame,
    FrameAnalyzer,
    FrameRow,
    FrameSettings,
    import_av,
    table_cells,
    table_header,
)
from xmask.apps.overlap import Failed, run_stages
from xmask.apps.sources import Source
from xmask.apps.tracking import lines_setting
from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import png_bytes
from xmask.errors import DataError, MissingDependencyError, UsageError
from xmask.inference.predictor import ImageFeatures, Predictor

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """One video's predictions.

    Attributes:
        rows: the predicted frames (every ``every``-th decoded frame, from 0), in order.
        lines: per counting line, ``{"in": people, "out": people}`` who crossed it.
        tracks: tracks started (with lines).
        network_s: seconds in the network over all frames.
        post_s: seconds after the network over all frames.
    """

    rows: list[FrameRow] = field(default_factory=list)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    tracks: int = 0
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


def predict_video(
    predictor: Predictor,
    source: Source,
    out: str | Path,
    *,
    every: int = 1,
    frames: FrameSettings | None = None,
    settings: str = "",
    force: bool = False,
    progress: bool = True,
    pipeline: bool = True,
) -> VideoResult | None:
    """Predict every ``every``-th frame of a video and write its outputs (module docstring).

    Args:
        frames: region, zones, counting lines and tracking, heatmap.
        settings: the fingerprint of the prediction settings
            (:func:`xmask.apps.batch.settings_fingerprint`).
        force: redo the video even when its outputs are up to date.
        pipeline: decode, network and post-processing (drawing, encoding) in three threads
            (:mod:`xmask.apps.overlap`; the same outputs as one frame after another).

    Returns:
        The result, or None when the video was already done.

    Raises:
        DataError: an unreadable video or one without a video stream.
        UsageError: PyAV is missing, or ``every < 1``.
    """
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")
    files = VideoOutputs(Path(out), source.stem)
    frames = frames or FrameSettings()
    fingerprint = {"source": source_fingerprint(source), "settings": settings, "every": every}
    if frames.lines:  # only with lines: earlier fingerprints without them stay valid
        fingerprint["lines"] = lines_setting(frames.lines, frames.tracking)
    earlier = read_record(files.record)
    if not force and earlier is not None and earlier.get("fingerprint") == fingerprint:
        return None
    files.record.unlink(missing_ok=True)
    files.heatmap.unlink(missing_ok=True)
    av = import_av()
    files.video.parent.mkdir(parents=True, exist_ok=True)
    partial = files.video.with_name(f".{files.video.name}.part")
    try:
        result, picture = _run(
            av, predictor, source.path, partial, every, frames, progress, pipeline
        )
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        partial.unlink(missing_ok=True)
        raise DataError(source.path, f"unreadable video ({err})") from err
    os.replace(partial, files.video)
    _write_plot(files.plot, result, source.name)
    _write_table(files.table, result, frames)
    if picture is not None:
        atomic_write_bytes(files.heatmap, png_bytes(picture))
    record = {"video": source.name, "frames": len(result.rows), "fingerprint": fingerprint}
    if frames.lines:
        record |= {"lines": result.lines, "tracks": result.tracks}
    atomic_write_bytes(files.record, (json.dumps(record) + "\n").encode("utf-8"))
    return result


def _run(
    av: Any,
    predictor: Predictor,
    path: Path,
    partial: Path,
    every: int,
    settings: FrameSettings,
    progress: bool,
    pipeline: bool,
) -> tuple[VideoResult, np.ndarray | None]:
    """The frames' result, and the heatmap picture (None: no heatmap)."""
    result = VideoResult()
    analyzer = FrameAnalyzer(predictor, settings, str(path))
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(path, "no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or 25) / every
        total = (stream.frames or 0) // every or None
        writer = AnnotatedWriter(av, partial, rate)

        def decoded() -> Iterator[Frame]:
            for index, frame in enumerate(container.decode(stream)):
                if not index % every:
                    time_s = float(frame.time or index / float(rate * every))
                    yield Frame(index, time_s, frame.to_ndarray(format="rgb24"))

        def drawn(done: tuple[Frame, ImageFeatures]) -> FrameRow:
            row, prediction = analyzer.count(done)
            writer.write(analyzer.picture(prediction))
            return row

        stages = (analyzer.check, analyzer.network, drawn)
        bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
        try:
            with closing(run_stages(decoded(), stages, threads=pipeline)) as rows:
                for _, row in rows:
                    if isinstance(row, Failed):
                        raise row.value
                    result.rows.append(row)
                    bar.update()
                    bar.set_postfix(count=row.count, refresh=False)
            bar.close()
            if not result.rows:
                raise DataError(path, "no frame could be decoded")
        finally:
            writer.close()
    result.lines, result.tracks = analyzer.counter.totals(), analyzer.tracks
    result.network_s, result.post_s = analyzer.network_s, analyzer.post_s
    return result, analyzer.heatmap()


def _write_table(path: Path, result: VideoResult, settings: FrameSettings) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(table_header(settings))
    writer.writerows(table_cells(row) for row in result.rows)
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
    times = [row.time_s for row in result.rows]
    axis.plot(times, [row.count for row in result.rows], color="tab:red")
    axis.set(xlabel="time (s)", ylabel="heads", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
