"""What videos and streams share: one decoded frame → a prediction and its table row (count,
heads per zone, people crossing each line), the head density over all frames, and the annotated
H.264 output.

A frame's row (:class:`FrameRow`) is written as CSV by :func:`table_header` and
:func:`table_cells`: ``frame,time_s[,wall_time],count``, a ``zone:NAME`` column per zone
(:mod:`xmask.apps.zones`) and, per counting line, ``line:NAME:in`` and ``line:NAME:out``: the
people who crossed it so far (:mod:`xmask.apps.tracking`; cumulative).

Needs PyAV for the annotated output (:func:`import_av`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmask.apps.batch import OutputOptions
from xmask.apps.roi import restrict
from xmask.apps.tracking import CountingLine, LineCounter, Tracker, TrackerConfig
from xmask.apps.zones import Zone, zone_column, zone_counts
from xmask.data.render import DensityGrid, draw_lines, heatmap_picture
from xmask.errors import DataError, MissingDependencyError
from xmask.inference.prediction import Prediction
from xmask.inference.predictor import ImageFeatures, Predictor

log = logging.getLogger(__name__)

CODEC = "libx264"


CODEC_OPTIONS = {"preset": "superfast"}
"""x264 at ``superfast``: a quarter of the CPU time per 1024×768 frame of its default
``medium`` (0.022 s instead of 0.097 s on this project's CPU), the file about as large; the
cores go to the network."""


def import_av() -> Any:
    """The ``av`` module (PyAV).

    Raises:
        MissingDependencyError: PyAV is not installed (the ``video`` extra).
    """
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("video input needs PyAV", "video") from err
    return av


@dataclass(frozen=True)
class FrameSettings:
    """What each frame is counted with.

    Attributes:
        roi: ``K×2`` ``(x, y)`` polygon to count inside (:mod:`xmask.apps.roi`), or None.
        zones: named polygons to count heads in.
        lines: counting lines; with any, head points are tracked across frames.
        tracking: how tracks are matched.
        heat: output options with ``heatmap`` set (the density of every frame is kept), or None.
    """

    roi: np.ndarray | None = None
    zones: Sequence[Zone] = ()
    lines: Sequence[CountingLine] = ()
    tracking: TrackerConfig = field(default_factory=TrackerConfig)
    heat: OutputOptions | None = None


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: its index among the decoded frames (from 0).
        time_s: its time in the video or stream, in seconds.
        image: ``H×W×3 uint8`` RGB.
    """

    index: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True)
class FrameRow:
    """One predicted frame.

    Attributes:
        frame: its index among the decoded frames (from 0).
        time_s: its time in the video or stream, in seconds.
        count: its heads.
        zones: heads per zone, by name.
        lines: per line name, ``{"in": people, "out": people}`` who crossed it up to this frame.
    """

    frame: int
    time_s: float
    count: int
    zones: dict[str, int] = field(default_factory=dict)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)


def table_header(settings: FrameSettings, wall: bool = False) -> list[str]:
    """The CSV columns of :class:`FrameRow` rows (``wall``: with a ``wall_time`` column)."""
    lines = [f"line:{line.name}:{way}" for line in settings.lines for way in ("in", "out")]
    zones = [zone_column(zone.name) for zone in settings.zones]
    return ["frame", "time_s", *(["wall_time"] if wall else []), "count", *zones, *lines]


def table_cells(row: FrameRow, wall_time: str | None = None) -> list[Any]:
    """One CSV row of :func:`table_header` (``wall_time``: the ISO time, with ``wall``)."""
    lines = [count[way] for count in row.lines.values() for way in ("in", "out")]
    wall = [] if wall_time is None else [wall_time]
    return [row.frame, f"{row.time_s:.3f}", *wall, row.count, *row.zones.values(), *lines]


class FrameAnalyzer:
    """Frames → predictions and rows, keeping the tracks, the crossings and the density: a
    frame goes through :meth:`check`, :meth:`network` and :meth:`count`, in that order (the
    network of one frame may run while the frame before is counted).

    Args:
        predictor: the model.
        settings: region, zones, lines, tracking and heatmap.
        source: what the frames come from, named in errors.
    """

    def __init__(self, predictor: Predictor, settings: FrameSettings, source: str) -> None:
        self.predictor = predictor
        self.settings = settings
        self.source = source
        self.size: tuple[int, int] | None = None
        self.tracker: Tracker | None = None
        self.counter = LineCounter(settings.lines)
        self.grid: DensityGrid | None = None
        self.background: np.ndarray | None = None
        self.network_s = 0.0
        self.post_s = 0.0

    def check(self, frame: Frame) -> Frame:
        """The frame, once its size is known to be the first frame's.

        Raises:
            DataError: the frame's size differs from the first frame's.
        """
        size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise DataError(self.source, f"the frame size changed from {self.size} to {size}")
        return frame

    def network(self, frame: Frame) -> tuple[Frame, ImageFeatures]:
        """The network's outputs for a checked frame (touches nothing of the analyzer, so it
        may run in one thread while :meth:`count` runs in another)."""
        return frame, self.predictor.run_network(frame.image)

    def count(self, done: tuple[Frame, ImageFeatures]) -> tuple[FrameRow, Prediction]:
        """The prediction of a frame from its network outputs, and its row; tracks, crossings
        and density go on from it (frames in their order)."""
        frame, features = done
        settings = self.settings
        prediction = self.predictor.predict_from(features)
        if settings.roi is not None:
            prediction = restrict(prediction, settings.roi)
        self.network_s += prediction.network_s
        self.post_s += prediction.post_s
        if settings.lines:
            self.tracker = self.tracker or Tracker(settings.tracking, prediction.size)
            ids = self.tracker.update(prediction.points)
            self.counter.update(ids, prediction.points, list(self.tracker.tracks))
        if settings.heat is not None:
            self.grid = self.grid or settings.heat.heatmap_grid(prediction.size)
            self.grid.add(prediction.points)
            self.background = prediction.image
        zones = zone_counts(prediction, settings.zones)
        row = FrameRow(frame.index, frame.time_s, prediction.count, zones, self.counter.totals())
        return row, prediction

    @property
    def tracks(self) -> int:
        """Tracks started so far (people seen, when every head is found in every frame)."""
        return 0 if self.tracker is None else self.tracker.started

    def picture(self, prediction: Prediction) -> np.ndarray:
        """The annotated frame: the overlay, and each line with its people in and out."""
        picture = prediction.overlay()
        if not self.settings.lines:
            return picture
        totals = self.counter.totals()
        labels = [f"{n}: {t['in']} in, {t['out']} out" for n, t in totals.items()]
        return draw_lines(picture, [line.ends for line in self.settings.lines], labels)

    def heatmap(self) -> np.ndarray | None:
        """The density of every frame so far over the last one (None: no heatmap or frame)."""
        if self.grid is None or self.background is None:
            return None
        return heatmap_picture(self.background, self.grid.density())


class AnnotatedWriter:
    """Annotated frames encoded as H.264 (yuv420p, sides cropped to even numbers,
    :data:`CODEC_OPTIONS`), the stream added at the first frame.

    Args:
        av: the PyAV module.
        path: the output file.
        rate: frames per second.
        container_options: options of the container (e.g. fragmented MP4).
    """

    def __init__(
        self, av: Any, path: Path, rate: Any, container_options: dict[str, str] | None = None
    ) -> None:
        self.av = av
        self.rate = rate
        self.output = av.open(str(path), "w", format="mp4", options=container_options or {})
        self.encoder: Any = None

    def write(self, picture: np.ndarray) -> None:
        """Encode one ``H×W×3 uint8`` RGB picture."""
        if self.encoder is None:
            self.encoder = self.output.add_stream(CODEC, rate=self.rate)
            shape = picture.shape
            self.encoder.width, self.encoder.height = (
                shape[1] - shape[1] % 2,
                shape[0] - shape[0] % 2,
            )
            self.encoder.pix_fmt = "yuv420p"
            self.encoder.options = dict(CODEC_OPTIONS)
        even = np.ascontiguousarray(picture[: self.encoder.height, : self.encoder.width])
        for packet in self.encoder.encode(self.av.VideoFrame.from_ndarray(even, format="rgb24")):
            self.output.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.encoder is not None:
            for packet in self.encoder.encode():
                self.output.mux(packet)
        self.output.close()
