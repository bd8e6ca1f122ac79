"""Head points tracked across the frames of a video or stream, and people counted crossing
lines.

:class:`Tracker` keeps one :class:`Track` per person. Each frame, every track's position is
predicted (its last position moved on by its velocity, pixels per frame, times the frames since
it was last seen) and matched to the frame's head points by a Hungarian match on the distance
(:func:`scipy.optimize.linear_sum_assignment`) gated at ``max_distance`` pixels: as many track–
point pairs closer than the gate as possible, and of those the least total distance. A matched
track moves to its point; an unmatched point starts a new track; a track missing for more than
``max_lost`` frames ends.

:class:`LineCounter` watches the tracks against named :class:`CountingLine` segments
(:mod:`xmask.geometry.lines`): a track crosses when it moves from one side of the segment to the
other through it (a point on the line keeps the side it came from). ``in`` counts the tracks that
crossed at least once from the left of ``start → end`` to its right as seen on the screen (for a
line drawn from left to right: downwards), ``out`` those that crossed the other way: unique
people per direction, cumulative, not per-frame totals; a person who crosses and comes back
counts once in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from xmask.errors import UsageError
from xmask.geometry.lines import crossings, sides

DISTANCE_SHARE = 0.05
"""Default gate: this share of the image's longer side, in pixels per predicted frame."""


@dataclass(frozen=True)
class TrackerConfig:
    """How tracks are matched.

    Attributes:
        max_distance: the gate in pixels between a track's predicted position and a head point
            (None: :data:`DISTANCE_SHARE` of the image's longer side).
        max_lost: frames a track may go unmatched before it ends.
    """

    max_distance: float | None = None
    max_lost: int = 5

    def __post_init__(self) -> None:
        if self.max_distance is not None and not 0 < self.max_distance < float("inf"):
            raise UsageError(f"--track-distance must be positive, got {self.max_distance}")
        if self.max_lost < 0:
            raise UsageError(f"--track-lost must be at least 0, got {self.max_lost}")

    def gate(self, size: tuple[int, int]) -> float:
        """The gate in pixels for frames of ``size`` ``(H, W)``."""
        if self.max_distance is not None:
            return float(self.max_distance)
        return DISTANCE_SHARE * max(size)


@dataclass
class Track:
    """One tracked person.

    Attributes:
        id: unique within its tracker, from 1 in order of appearance.
        position: ``(x, y)`` pixels where it was last seen.
        velocity: ``(x, y)`` pixels per frame over its last step.
        age: frames since it started (0 in its first frame).
        hits: frames it was seen in.
        lost: frames since it was last seen (0: seen in the latest frame).
    """

    id: int
    position: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    age: int = 0
    hits: int = 1
    lost: int = 0

    def predicted(self) -> np.ndarray:
        """Where it should be in the next frame: ``position + velocity · (lost + 1)``."""
        return self.position + self.velocity * (self.lost + 1)


def gated_match(cost: np.ndarray, gate: float) -> list[tuple[int, int]]:
    """``(row, column)`` pairs of a ``T×N`` distance matrix: the most pairs with a distance of
    at most ``gate``, and of those the least total distance."""
    if cost.size == 0:
        return []
    allowed = cost <= gate
    # A forbidden pair costs more than any set of allowed pairs, so fewer pairs never win.
    forbidden = (gate + 1.0) * (min(cost.shape) + 1)
    rows, cols = linear_sum_assignment(np.where(allowed, cost, forbidden))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


class Tracker:
    """Tracks of head points across frames (module docstring).

    Args:
        config: the gate and the lost-frame tolerance.
        size: ``(H, W)`` of the frames (for the default gate).
    """

    def __init__(self, config: TrackerConfig, size: tuple[int, int]) -> None:
        self.gate = config.gate(size)
        self.max_lost = config.max_lost
        self.tracks: dict[int, Track] = {}
        self.started = 0

    def update(self, points: np.ndarray) -> np.ndarray:
        """Match one frame's head points to the tracks.

        Args:
            points: ``N×2`` ``(x, y)`` pixels.

        Returns:
            ``N int64``: the track id of each point.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        live = list(self.tracks.values())
        ids = np.zeros(len(pts), dtype=np.int64)
        if live and len(pts):
            predicted = np.stack([track.predicted() for track in live])
            cost = np.linalg.norm(predicted[:, None, :] - pts[None, :, :], axis=2)
            pairs = gated_match(cost, self.gate)
        else:
            pairs = []
        matched = set()
        for row, col in pairs:
            track = live[row]
            track.velocity = (pts[col] - track.position) / (track.lost + 1)
            track.position = pts[col].copy()
            track.hits += 1
            track.lost = -1  # 0 after the ageing below
            ids[col] = track.id
            matched.add(row)
        for row, track in enumerate(live):
            track.age += 1
            track.lost += 1
            if row not in matched and track.lost > self.max_lost:
                del self.tracks[track.id]
        for col in np.flatnonzero(ids == 0):
            self.started += 1
            self.tracks[self.started] = Track(self.started, pts[col].copy())
            ids[col] = self.started
        return ids


@dataclass(frozen=True)
class CountingLine:
    """A named counting line.

    Attributes:
        name: unique among the lines.
        ends: ``2×2 float64``: ``start`` and ``end``, ``(x, y)`` pixels.
    """

    name: str
    ends: np.ndarray


@dataclass
class LineCount:
    """People who crossed one line so far, per direction (module docstring).

    Attributes:
        crossed_in: ids of the tracks that crossed from its left to its right.
        crossed_out: ids of the tracks that crossed from its right to its left.
    """

    crossed_in: set[int] = field(default_factory=set)
    crossed_out: set[int] = field(default_factory=set)

    def totals(self) -> dict[str, int]:
        """``{"in": people, "out": people}``."""
        return {"in": len(self.crossed_in), "out": len(self.crossed_out)}


class LineCounter:
    """Unique tracks crossing each line, per direction (module docstring).

    Args:
        lines: the counting lines.
    """

    def __init__(self, lines: Sequence[CountingLine]) -> None:
        self.lines = tuple(lines)
        self.counts = {line.name: LineCount() for line in self.lines}
        # Per line, per track id: the last position with a non-zero side, and that side.
        self._anchors: list[dict[int, tuple[np.ndarray, int]]] = [{} for _ in self.lines]

    def update(self, ids: np.ndarray, points: np.ndarray, alive: Sequence[int]) -> None:
        """Count the crossings of one frame.

        Args:
            ids: ``N`` track ids of the points (:meth:`Tracker.update`).
            points: ``N×2`` ``(x, y)`` pixels.
            alive: the ids of every track still alive (the anchors of others are dropped).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        keep = set(int(i) for i in alive)
        for line, anchors, count in zip(
            self.lines, self._anchors, self.counts.values(), strict=True
        ):
            now = sides(pts, line.ends[0], line.ends[1])
            for track_id, point, side in zip(ids.tolist(), pts, now.tolist(), strict=True):
                if side == 0:
                    continue
                earlier = anchors.get(track_id)
                if earlier is not None and earlier[1] != side:
                    step = crossings(earlier[0], point, line.ends[0], line.ends[1])[0]
                    if step > 0:
                        count.crossed_in.add(track_id)
                    elif step < 0:
                        count.crossed_out.add(track_id)
                anchors[track_id] = (point, side)
            for gone in set(anchors) - keep:
                del anchors[gone]

    def totals(self) -> dict[str, dict[str, int]]:
        """Per line name, ``{"in": people, "out": people}`` so far."""
        return {name: count.totals() for name, count in self.counts.items()}


def lines_setting(lines: Sequence[CountingLine], config: TrackerConfig) -> dict[str, Any]:
    """The lines and the tracking as JSON for a settings fingerprint."""
    return {"lines": [[line.name, line.ends.tolist()] for line in lines], **asdict(config)}
