"""Prediction on a live source (:mod:`xmask.apps.live`): a video without a known length, its
frames counted as a video's are (:mod:`xmask.apps.frames`) while they arrive.

For ``OUT/streams/`` and a live source ``NAME`` (:attr:`~xmask.apps.live.LiveSource.name`):

- ``NAME.csv``: a row per predicted frame, appended and flushed as it goes (``tail -f`` shows
  it): ``frame,time_s,wall_time,count``, a ``zone:NAME`` column per zone and ``line:NAME:in``,
  ``line:NAME:out`` per counting line (people so far). ``frame`` is the index among the frames
  decoded since the run started, ``time_s`` the stream's own clock (continued across
  reconnections), ``wall_time`` when the frame was decoded (ISO 8601, local time with its
  offset). A later run appends to the file when its columns are the same (``frame`` then counts
  from 0 again; ``wall_time`` tells the runs apart) and refuses to otherwise, unless ``force``,
  which starts the file anew;
- ``NAME.mp4``: with ``save_video``, the annotated frames (as a video's), fragmented MP4 so
  that it plays while written and after a crash;
- ``NAME-heatmap.png``: with a heatmap, the head density of every predicted frame of the run
  over the latest one;
- ``NAME.json``: the :class:`StreamSummary`.

The summary and heatmap are rewritten (atomically) every :data:`SNAPSHOT_S` seconds and when the
run stops: after ``duration_s`` seconds or ``frames`` predicted frames, on Ctrl-C
(``KeyboardInterrupt``: every row written is kept), or when the source stays lost after its
retries. With ``max_fps``, at most that many frames are predicted per second of wall time and
the reader never waits for the model: frames that arrive meanwhile are dropped (and counted)
rather than predicted late. With ``pipeline`` (the default) the network runs on one frame while
the one before is counted and drawn in another thread; the frames taken before a stop are still
predicted and written (one or two more than the time bound allows).
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

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
from xmask.apps.live import LiveFrame, LiveReader, LiveSource, Reconnect
from xmask.apps.overlap import Failed, run_stages
from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import png_bytes
from xmask.errors import DataError, UsageError
from xmask.inference.predictor import ImageFeatures, Predictor

log = logging.getLogger(__name__)

SNAPSHOT_S = 60.0
"""Seconds of wall time between rewrites of a running stream's summary and heatmap."""

POLL_S = 0.2
"""Longest wait for a frame before the stop conditions are checked again."""


@dataclass(frozen=True)
class StreamOptions:
    """How a live source is read.

    Attributes:
        every: predict every ``every``-th decoded frame.
        max_fps: predict at most this many frames per second, dropping the others (None: every
            frame, however late).
        duration_s: stop after this many seconds of wall time (None: no bound).
        frames: stop after this many predicted frames (None: no bound).
        save_video: write the annotated frames.
        reconnect: how a dropped source is opened again.
        pipeline: the network on one frame while the one before is counted and drawn, in
            another thread (:mod:`xmask.apps.overlap`; the same rows).
    """

    every: int = 1
    max_fps: float | None = None
    duration_s: float | None = None
    frames: int | None = None
    save_video: bool = False
    reconnect: Reconnect = field(default_factory=Reconnect)
    pipeline: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise UsageError(f"--every must be at least 1, got {self.every}")
        for name, value in (("--max-fps", self.max_fps), ("--duration", self.duration_s)):
            if value is not None and not 0 < value < float("inf"):
                raise UsageError(f"{name} must be positive, got {value}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be at least 1, got {self.frames}")


@dataclass
class StreamSummary:
    """What ``NAME.json`` holds.

    Attributes:
        source: the source, as logs name it (no user name, password or query).
        name: its output name.
        table: the CSV file.
        started: when the run started (ISO 8601).
        ended: when it stopped (ISO 8601; empty while running).
        stopped: why: ``running``, ``duration``, ``frames``, ``interrupted``, ``source lost``
            or ``error``.
        problem: what went wrong with the source or the run, if anything.
        frames_decoded: frames decoded.
        frames_predicted: frames predicted (the rows of this run).
        frames_dropped: frames dropped to keep up (``max_fps``).
        reconnects: attempts to open the source again.
        seconds: wall time of the run.
        mean_count: heads per predicted frame.
        max_count: most heads in a frame.
        lines: per counting line, ``{"in": people, "out": people}`` who crossed it.
        tracks: tracks started (with lines).
        network_s: seconds in the network.
        post_s: seconds after it.
    """

    source: str
    name: str
    table: str
    started: str
    ended: str = ""
    stopped: str = "running"
    problem: str | None = None
    frames_decoded: int = 0
    frames_predicted: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    mean_count: float = 0.0
    max_count: int = 0
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    tracks: int = 0
    network_s: float = 0.0
    post_s: float = 0.0


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _open_table(path: Path, header: list[str], force: bool) -> IO[str]:
    """The CSV opened for appending, its header written when new (module docstring).

    Raises:
        DataError: the file holds other columns (without ``force``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = ",".join(header)
    if path.is_file() and path.stat().st_size and not force:
        with path.open(encoding="utf-8", newline="") as handle:
            first = handle.readline().rstrip("\r\n")
        if first != wanted:
            raise DataError(
                path, f"holds other columns ({first[:200]}): use another --out, or --force "
                "to start it anew",
            )  # fmt: skip
        return path.open("a", encoding="utf-8", newline="")
    handle = path.open("w", encoding="utf-8", newline="")
    handle.write(wanted + "\n")
    handle.flush()
    return handle


class _Run:
    """One run's files, counters and summary."""

    def __init__(self, out: Path, source: LiveSource, analyzer: FrameAnalyzer) -> None:
        stem = source.name  # checked by LiveSource: one safe path part
        self.folder = out / "streams"
        self.table_path = self.folder / f"{stem}.csv"
        self.summary_path = self.folder / f"{stem}.json"
        self.heatmap_path = self.folder / f"{stem}-heatmap.png"
        self.video_path = self.folder / f"{stem}.mp4"
        self.analyzer = analyzer
        self.summary = StreamSummary(source.label, source.name, str(self.table_path), _now())
        self.started = time.monotonic()
        self.snapshot_at = self.started + SNAPSHOT_S
        self.heads = 0
        self.writer: AnnotatedWriter | None = None
        self.lock = threading.Lock()
        """Held while the analyzer counts a frame or a snapshot reads it."""

    def add(self, row: FrameRow) -> None:
        summary = self.summary
        summary.frames_predicted += 1
        self.heads += row.count
        summary.max_count = max(summary.max_count, row.count)

    def write(self, reader: LiveReader) -> None:
        """Rewrite the summary and the heatmap."""
        summary, analyzer = self.summary, self.analyzer
        summary.frames_decoded, summary.frames_dropped = reader.decoded, reader.dropped
        summary.reconnects = reader.reconnects
        summary.problem = summary.problem or reader.problem
        summary.seconds = round(time.monotonic() - self.started, 3)
        summary.mean_count = round(self.heads / max(1, summary.frames_predicted), 3)
        with self.lock:
            summary.lines, summary.tracks = analyzer.counter.totals(), analyzer.tracks
            summary.network_s, summary.post_s = analyzer.network_s, analyzer.post_s
            picture = analyzer.heatmap()
        if picture is not None:
            atomic_write_bytes(self.heatmap_path, png_bytes(picture))
        text = json.dumps(asdict(summary), indent=2) + "\n"
        atomic_write_bytes(self.summary_path, text.encode("utf-8"))
        self.snapshot_at = time.monotonic() + SNAPSHOT_S


def predict_stream(
    predictor: Predictor,
    source: LiveSource,
    out: str | Path,
    *,
    options: StreamOptions | None = None,
    frames: FrameSettings | None = None,
    force: bool = False,
    progress: bool = True,
    on_row: Callable[[FrameRow], None] | None = None,
) -> StreamSummary:
    """Predict a live source's frames as they arrive until a stop condition, writing its files
    (module docstring).

    Args:
        options: every, frame budget, bounds, annotated video, reconnection.
        frames: region, zones, counting lines and tracking, heatmap.
        force: start the CSV anew even when it holds other columns.
        progress: show a tqdm counter on stderr.
        on_row: called with each frame's row once it is written (in the calling thread).

    Returns:
        The summary, also written to ``NAME.json``; ``stopped`` says why the run ended.

    Raises:
        DataError: the CSV holds other columns, or the frame size changed (the summary is
            written first).
        UsageError: PyAV is missing.
    """
    options = options or StreamOptions()
    frames = frames or FrameSettings()
    av = import_av()
    analyzer = FrameAnalyzer(predictor, frames, source.label)
    run = _Run(Path(out), source, analyzer)
    table = _open_table(run.table_path, table_header(frames, wall=True), force)
    reader = LiveReader(av, source, options.reconnect, options.every, options.max_fps is not None)
    bar = tqdm(desc=source.name, unit="frame", disable=not progress)
    summary = run.summary
    try:
        reader.start()
        _loop(av, run, reader, options, table, bar, on_row)
    except KeyboardInterrupt:
        summary.stopped = "interrupted"
        log.info("%s: interrupted; the rows written are kept", source.label)
    except BaseException as err:
        summary.stopped, summary.problem = "error", str(err)
        raise
    finally:
        reader.stop()
        bar.close()
        table.close()
        if run.writer is not None:
            run.writer.close()
        summary.ended = _now()
        run.write(reader)
    return summary


def _loop(
    av: Any,
    run: _Run,
    reader: LiveReader,
    options: StreamOptions,
    table: IO[str],
    bar: Any,
    on_row: Callable[[FrameRow], None] | None,
) -> None:
    """Predict frames until a stop condition (sets ``run.summary.stopped``): the frames taken
    in order (:func:`_taken`), their network and their counting and drawing overlapped with
    ``options.pipeline`` (:mod:`xmask.apps.overlap`), their rows written here."""
    analyzer = run.analyzer
    rows = csv.writer(table, lineterminator="\n")

    def counted(done: tuple[Frame, ImageFeatures]) -> FrameRow:
        with run.lock:
            row, prediction = analyzer.count(done)
        if options.save_video:
            if run.writer is None:
                rate = Fraction(options.max_fps or 25).limit_denominator(1000)
                fragmented = {"movflags": "frag_keyframe+empty_moov"}
                run.writer = AnnotatedWriter(av, run.video_path, rate, fragmented)
            run.writer.write(analyzer.picture(prediction))
        return row

    def checked(live: LiveFrame) -> Frame:
        return analyzer.check(Frame(live.index, live.time_s, live.image))

    stages = (checked, analyzer.network, counted)
    halt = threading.Event()
    taken = _taken(run, reader, options, halt)
    frames = run_stages(taken, stages, threads=options.pipeline, depth=1)
    with closing(frames):
        try:
            for frame, row in frames:
                if isinstance(row, Failed):
                    raise row.value
                wall = datetime.fromtimestamp(frame.wall).astimezone()
                rows.writerow(table_cells(row, wall.isoformat(timespec="milliseconds")))
                table.flush()
                run.add(row)
                bar.update()
                bar.set_postfix(count=row.count, refresh=False)
                if on_row is not None:
                    on_row(row)
                if time.monotonic() >= run.snapshot_at:
                    run.write(reader)
        finally:
            halt.set()  # before the stages are stopped: the taking thread waits for no frame


def _taken(
    run: _Run, reader: LiveReader, options: StreamOptions, halt: threading.Event
) -> Iterator[LiveFrame]:
    """The frames to predict, in order, until a stop condition (sets ``run.summary.stopped``;
    ``frames`` counts the frames taken, each of which is predicted) or ``halt``."""
    summary = run.summary
    end = None if options.duration_s is None else run.started + options.duration_s
    next_at = run.started
    taken = 0
    while not halt.is_set():
        now = time.monotonic()
        if end is not None and now >= end:
            summary.stopped = "duration"
            return
        if options.frames is not None and taken >= options.frames:
            summary.stopped = "frames"
            return
        wait = POLL_S if end is None else min(POLL_S, end - now)
        if now < next_at:  # the frame budget: the reader drops what arrives meanwhile
            time.sleep(min(wait, next_at - now))
            continue
        frame = reader.take(wait)
        if frame is None:
            if reader.finished:
                summary.stopped = "source lost"
                return
            continue
        if options.max_fps is not None:
            next_at = time.monotonic() + 1.0 / options.max_fps
        taken += 1
        yield frame
