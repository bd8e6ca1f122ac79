"""Live sources: a webcam index (``0``), a video device (``/dev/video0``) or a stream URL
(``rtsp://``, ``rtsps://``, ``rtmp://``, ``http://``, ``https://``: e.g. an MJPEG camera),
decoded with PyAV in a thread that reconnects when the source drops.

The text of a source is only ever handed to PyAV (FFmpeg) to open; its output name
(:attr:`LiveSource.name`) keeps only the host, port and path of a URL (never the user name,
password or query, which may hold a token), with every character but letters, digits, ``.``,
``_`` and ``-`` replaced, and logs name a URL without them either (:attr:`LiveSource.label`).

:class:`LiveReader` hands frames to one consumer through a one-frame slot: with ``drop`` a new
frame replaces one not yet taken (counted in ``dropped``: the consumer never falls behind the
source); without, the reader waits for the consumer. When opening or reading fails, or the
source ends, the reader opens it again after ``first_delay_s``, doubling up to ``max_delay_s``,
at most ``retries`` times in a row (a connection that gives a frame resets the count); each
attempt is logged. A frame's time is the source's own timestamp from the first frame of its
connection, continued across reconnections.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from xmask.errors import UsageError

log = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
"""URL schemes read as live streams."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class LiveSource:
    """A live source.

    Attributes:
        name: its output name (module docstring).
        url: what PyAV opens (left out of the ``repr``: it may hold a password).
        format: the FFmpeg input format (``v4l2``, ``avfoundation``), or None: probed.
        options: FFmpeg options of the input.
        label: how logs and summaries name it (no user name, password or query).
    """

    name: str
    url: str = field(repr=False)
    format: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise UsageError(
                f"{self.name!r}: a live source's name is 1 to 64 letters, digits, "
                "'.', '_' or '-', not starting with '.'"
            )


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._-")[:64]


def live_source(spec: str) -> LiveSource | None:
    """The live source ``spec`` names, or None when it names a file, folder or pattern.

    Raises:
        UsageError: a webcam index on a system without a known camera input.
    """
    if spec.isdigit():
        if sys.platform.startswith("linux"):
            return LiveSource(f"webcam{spec}", f"/dev/video{spec}", "v4l2", label=f"webcam {spec}")
        if sys.platform == "darwin":
            return LiveSource(f"webcam{spec}", spec, "avfoundation", label=f"webcam {spec}")
        raise UsageError(f"webcam {spec}: give the camera as a device or URL on {sys.platform}")
    if re.fullmatch(r"/dev/video\d+", spec):
        return LiveSource(spec.rsplit("/", 1)[1], spec, "v4l2", label=spec)
    parts = urlsplit(spec)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    label = f"{parts.scheme}://{host}{parts.path}"
    pieces = (parts.hostname, str(parts.port or ""), *parts.path.split("/"))
    name = _safe("-".join(_safe(piece) for piece in pieces if _safe(piece)))
    if not name:  # nothing but punctuation: a digest of the label keeps it distinct
        name = "stream-" + hashlib.sha256(label.encode()).hexdigest()[:8]
    options = (("rtsp_transport", "tcp"),) if parts.scheme.lower().startswith("rtsp") else ()
    return LiveSource(name, spec, None, options, label)


@dataclass(frozen=True)
class Reconnect:
    """How a dropped source is opened again.

    Attributes:
        retries: attempts in a row before giving up (0: never).
        first_delay_s: the wait before the first attempt, doubled at each next one.
        max_delay_s: the longest wait.
        timeout_s: how long opening or reading may block before it fails.
    """

    retries: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise UsageError(f"--retries must be at least 0, got {self.retries}")
        if not (0 <= self.first_delay_s <= self.max_delay_s and self.timeout_s > 0):
            raise UsageError("reconnect delays must be 0 <= first <= max, the timeout positive")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (from 1)."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))


@dataclass(frozen=True)
class LiveFrame:
    """A decoded frame.

    Attributes:
        index: its index among the frames decoded since the reader started.
        time_s: its time in the stream (module docstring).
        wall: when it was decoded (:func:`time.time`).
        image: ``H×W×3 uint8`` RGB.
    """

    index: int
    time_s: float
    wall: float
    image: np.ndarray


class LiveReader:
    """A live source decoded in a daemon thread (module docstring).

    Args:
        av: the PyAV module.
        source: what to read.
        reconnect: the retry rule.
        every: hand over every ``every``-th decoded frame only.
        drop: replace a frame not yet taken instead of waiting for the consumer.
    """

    def __init__(
        self, av: Any, source: LiveSource, reconnect: Reconnect, every: int = 1, drop: bool = False
    ) -> None:
        self.av = av
        self.source = source
        self.reconnect = reconnect
        self.every = every
        self.drop = drop
        self.decoded = 0
        self.dropped = 0
        self.reconnects = 0
        self.finished = False
        self.problem: str | None = None
        self.error: BaseException | None = None
        self._slot: LiveFrame | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xmask-{source.name}", daemon=True)

    def start(self) -> None:
        """Start decoding."""
        self._thread.start()

    def stop(self, wait_s: float = 1.0) -> None:
        """Ask the thread to end and wait up to ``wait_s`` for it (a read blocked in FFmpeg ends
        at its timeout; the thread is a daemon)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(wait_s)

    def take(self, timeout_s: float) -> LiveFrame | None:
        """The next frame, waiting up to ``timeout_s``; None when none came (see
        :attr:`finished`).

        Raises:
            BaseException: what ended the thread unexpectedly.
        """
        with self._changed:
            if self._slot is None and not self.finished:
                self._changed.wait(timeout_s)
            frame, self._slot = self._slot, None
            self._changed.notify_all()
        if frame is None and self.error is not None:
            raise self.error
        return frame

    def _put(self, frame: LiveFrame) -> None:
        with self._changed:
            while self._slot is not None and not self.drop and not self._stop.is_set():
                self._changed.wait(0.1)
            if self._stop.is_set():
                return
            self.dropped += self._slot is not None
            self._slot = frame
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as err:  # handed to the consumer by take()
            self.error = err
        finally:
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def _read(self) -> None:
        attempt = 0
        offset = 0.0
        while not self._stop.is_set():
            gave, offset, problem = self._connection(offset)
            attempt = 0 if gave else attempt
            if self._stop.is_set():
                return
            attempt += 1
            if attempt > self.reconnect.retries:
                self.problem = f"{problem}; gave up after {self.reconnect.retries} retries"
                log.warning("%s: %s", self.source.label, self.problem)
                return
            delay = self.reconnect.delay(attempt)
            log.warning(
                "%s: %s; reconnecting in %.1f s (attempt %d of %d)",
                self.source.label, problem, delay, attempt, self.reconnect.retries,
            )  # fmt: skip
            self._stop.wait(delay)
            self.reconnects += 1

    def _connection(self, offset: float) -> tuple[bool, float, str]:
        """Read one connection: whether it gave a frame, the time offset for the next one,
        and why it ended."""
        av = self.av
        timeout = self.reconnect.timeout_s
        gave = False
        time_s, step = offset, 0.0
        try:
            with av.open(
                self.source.url, format=self.source.format, options=dict(self.source.options),
                timeout=(timeout, timeout),
            ) as container:  # fmt: skip
                if not container.streams.video:
                    return False, offset, "no video stream"
                stream = container.streams.video[0]
                step = 1.0 / float(stream.average_rate or 25)
                first: float | None = None
                for frame in container.decode(stream):
                    if self._stop.is_set():
                        return gave, offset, "stopped"
                    stamp = frame.time
                    if stamp is None:
                        time_s = time_s + step if gave else offset
                    else:
                        first = stamp if first is None else first
                        time_s = offset + stamp - first
                    gave = True
                    index, self.decoded = self.decoded, self.decoded + 1
                    if index % self.every == 0:
                        image = frame.to_ndarray(format="rgb24")
                        self._put(LiveFrame(index, time_s, time.time(), image))
                problem = "the source ended"
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            problem = f"unreadable ({err})"
        return gave, time_s + step if gave else offset, problem
