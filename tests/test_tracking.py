"""Tracking head points across frames and counting people crossing lines: the tracker against
a slow, obvious reference (every partial matching tried), exact crossing counts on synthetic
walkers, and the line geometry."""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import pytest

from xmask.apps.tracking import CountingLine, LineCounter, Tracker, TrackerConfig, gated_match
from xmask.apps.zones import parse_line, parse_zone_file
from xmask.errors import UsageError
from xmask.geometry.lines import crossings, sides

LINE = CountingLine("door", np.array([[0.0, 50.0], [100.0, 50.0]]))
"""Horizontal, drawn left to right: ``in`` is downwards (y grows)."""


def reference_tracks(frames: list[np.ndarray], gate: float, max_lost: int) -> list[list[int]]:
    """Track ids per frame: positions predicted by the last step's velocity, then of every
    partial matching within the gate the largest, and of those the cheapest."""
    tracks: dict[int, dict] = {}
    started = 0
    out = []
    for points in frames:
        live = list(tracks)
        predicted = {i: tracks[i]["pos"] + tracks[i]["vel"] * (tracks[i]["lost"] + 1) for i in live}
        best: tuple[float, list[tuple[int, int]]] | None = None
        for k in range(min(len(live), len(points)), -1, -1):
            for rows in combinations(live, k):
                for cols in permutations(range(len(points)), k):
                    dists = [
                        float(np.hypot(*(predicted[r] - points[c])))
                        for r, c in zip(rows, cols, strict=True)
                    ]
                    if all(d <= gate for d in dists) and (best is None or sum(dists) < best[0]):
                        best = (sum(dists), list(zip(rows, cols, strict=True)))
            if best is not None:
                break
        ids = [0] * len(points)
        for track_id, col in best[1] if best else []:
            track = tracks[track_id]
            track["vel"] = (points[col] - track["pos"]) / (track["lost"] + 1)
            track["pos"] = points[col].astype(float)
            track["lost"] = -1
            ids[col] = track_id
        for track_id in live:
            tracks[track_id]["lost"] += 1
            if tracks[track_id]["lost"] > max_lost:
                del tracks[track_id]
        for col in range(len(points)):
            if ids[col] == 0:
                started += 1
                tracks[started] = {"pos": points[col].astype(float), "vel": np.zeros(2), "lost": 0}
                ids[col] = started
        out.append(ids)
    return out


def reference_crossings(
    frames: list[np.ndarray], ids: list[list[int]], a: np.ndarray, b: np.ndarray
) -> dict[str, int]:
    """People per direction, by solving ``p + t (q − p) = a + u (b − a)`` for each step between
    a track's last position off the line and its next one on the other side."""
    last: dict[int, tuple[np.ndarray, float]] = {}
    went_in, went_out = set(), set()
    for points, frame_ids in zip(frames, ids, strict=True):
        for track_id, q in zip(frame_ids, points, strict=True):
            side = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
            if side == 0:
                continue
            if track_id in last and (last[track_id][1] > 0) != (side > 0):
                p = last[track_id][0]
                matrix = np.array([[q[0] - p[0], a[0] - b[0]], [q[1] - p[1], a[1] - b[1]]])
                t, u = np.linalg.solve(matrix, a - p)
                if 0 <= t <= 1 and 0 <= u <= 1:
                    (went_in if side > 0 else went_out).add(track_id)
            last[track_id] = (q, side)
    return {"in": len(went_in), "out": len(went_out)}


def walk(start: tuple[float, float], step: tuple[float, float], frames: range) -> dict:
    """A person at ``start + k · step`` in the ``k``-th frame of ``frames``."""
    return {f: np.add(start, np.multiply(step, k)) for k, f in enumerate(frames)}


def scene() -> list[dict[int, np.ndarray]]:
    """Walkers and the line ``LINE``: 4 people cross in and 3 out (one of them both ways)."""
    a = walk((20, 30), (0, 4), range(0, 11))  # in, through y = 50 exactly
    b = walk((60, 74), (0, -4), range(0, 11))  # out
    f = walk((120, 30), (0, 4), range(0, 11))  # beyond the line's end: no crossing
    c = walk((80, 30), (0, 4), range(20, 31))  # in, its point dropped just after the line
    del c[26]
    g = walk((10, 30), (0, 4), range(20, 26)) | walk((10, 46), (0, -4), range(26, 31))
    d = walk((40, 30), (0, 4), range(40, 51))  # in, passing 3 px from e
    e = walk((43, 70), (0, -4), range(40, 51))  # out
    h = walk((90, 38), (0, 4), range(60, 66)) | walk((90, 58), (0, -4), range(66, 72))
    return [a, b, f, c, g, d, e, h]


def scene_frames(people: list[dict[int, np.ndarray]]) -> list[np.ndarray]:
    last = max(max(p) for p in people)
    return [
        np.array([p[f] for p in people if f in p], dtype=np.float64).reshape(-1, 2)
        for f in range(last + 1)
    ]


def run_tracker(frames: list[np.ndarray], config: TrackerConfig) -> tuple[list, dict]:
    tracker = Tracker(config, (100, 200))
    counter = LineCounter([LINE])
    ids = []
    for points in frames:
        frame_ids = tracker.update(points)
        counter.update(frame_ids, points, list(tracker.tracks))
        ids.append(frame_ids.tolist())
    return ids, counter.totals()["door"]


def test_walkers_give_exact_crossing_counts_and_match_the_reference() -> None:
    frames = scene_frames(scene())
    config = TrackerConfig(max_distance=10.0, max_lost=3)
    ids, totals = run_tracker(frames, config)
    assert totals == {"in": 4, "out": 3}
    assert ids == reference_tracks(frames, 10.0, 3)
    assert reference_crossings(frames, ids, *LINE.ends) == totals
    assert max(max(i) for i in ids if i) == 8  # one track per person: c kept through its gap


def test_two_people_passing_close_keep_their_tracks() -> None:
    people = scene()[5:7]
    frames = scene_frames(people)
    ids, totals = run_tracker(frames, TrackerConfig(10.0, 3))
    first = ids[40]
    assert all(frame_ids == first for frame_ids in ids[40:])
    assert totals == {"in": 1, "out": 1}


def test_a_track_lost_too_long_ends() -> None:
    frames = [np.array([[10.0, 10.0]]), np.empty((0, 2)), np.empty((0, 2)), np.array([[10, 10.0]])]
    ids, _ = run_tracker(frames, TrackerConfig(5.0, max_lost=1))
    assert ids == [[1], [], [], [2]]
    ids, _ = run_tracker(frames, TrackerConfig(5.0, max_lost=2))
    assert ids == [[1], [], [], [1]]


@pytest.mark.parametrize("seed", range(6))
def test_random_walkers_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    people = []
    for _ in range(5):
        start = rng.uniform((0, 20), (100, 80))
        step = rng.uniform(-5, 5, size=2)
        first = int(rng.integers(0, 10))
        person = walk(start, step, range(first, first + int(rng.integers(5, 20))))
        for f in person:
            person[f] = person[f] + rng.normal(0, 0.7, size=2)
        for f in rng.choice(list(person), size=2, replace=False)[:1]:
            del person[int(f)]  # one dropped frame
        people.append(person)
    frames = scene_frames(people)
    for frame in frames:
        rng.shuffle(frame)  # detection order means nothing
    config = TrackerConfig(max_distance=9.0, max_lost=2)
    ids, totals = run_tracker(frames, config)
    assert ids == reference_tracks(frames, 9.0, 2)
    assert totals == reference_crossings(frames, ids, *LINE.ends)


def test_gated_match_prefers_more_pairs_then_less_distance() -> None:
    cost = np.array([[1.0, 2.0], [1.5, 50.0]])
    assert sorted(gated_match(cost, gate=3.0)) == [(0, 1), (1, 0)]
    assert gated_match(cost, gate=1.2) == [(0, 0)]
    assert gated_match(np.empty((0, 3)), gate=1.0) == []


def test_sides_and_crossings() -> None:
    a, b = LINE.ends
    assert sides(np.array([[5, 40], [5, 60], [5, 50]]), a, b).tolist() == [-1, 1, 0]
    starts = np.array([[10, 40], [10, 60], [110, 40], [10, 40], [0, 40]])
    ends = np.array([[10, 60], [10, 40], [110, 60], [10, 45], [0, 60]])
    assert crossings(starts, ends, a, b).tolist() == [1, -1, 0, 0, 1]  # the last: at its end


def test_line_parsing() -> None:
    line = parse_line("0,10 100,10", "line1")
    assert line.name == "line1" and line.ends.tolist() == [[0, 10], [100, 10]]
    for bad in ("0,10", "0,10 0,10", "a,b c,d", "0,10 1,2 3,4", "0,10 nan,1"):
        with pytest.raises(UsageError):
            parse_line(bad, "x")
    content = {"lines": [{"name": "door", "line": [[0, 1], [2, 3]]}]}
    parsed = parse_zone_file(content)
    assert parsed.zones == () and [line.name for line in parsed.lines] == ["door"]
    with pytest.raises(UsageError, match="twice"):
        parse_zone_file({"lines": content["lines"] * 2})
    with pytest.raises(UsageError):
        parse_zone_file({"lines": [{"name": "door", "polygon": [[0, 1], [2, 3]]}]})
    with pytest.raises(UsageError):
        TrackerConfig(max_distance=0.0)
