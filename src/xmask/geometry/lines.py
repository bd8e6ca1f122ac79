"""Counting lines: the side of a directed segment a point lies on, and whether a step from one
point to another crosses the segment.

A line runs from ``a`` to ``b``, ``(x, y)`` pixels with the image's y axis pointing down. The
side of a point ``p`` is the sign of the cross product ``(b − a) × (p − a)``: ``+1`` on the
right of ``a → b`` as seen on the screen (below a line drawn from left to right), ``−1`` on its
left, ``0`` on the line through ``a`` and ``b``. A step ``p → q`` crosses the segment when
``p`` and ``q`` lie on opposite sides (both non-zero) and the segment ``p–q`` meets the segment
``a–b`` (its ends included): ``+1`` left to right, ``−1`` right to left.
"""

from __future__ import annotations

import numpy as np


def _cross(origin: np.ndarray, towards: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(towards − origin) × (points − origin)`` for ``N×2`` points (origins may be ``N×2``)."""
    d = towards - origin
    r = points - origin
    return d[..., 0] * r[..., 1] - d[..., 1] * r[..., 0]


def sides(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``N int8``: the side (``−1``, ``0``, ``+1``) of each point of ``points`` (``N×2``,
    ``(x, y)`` pixels) relative to the directed line ``a → b`` (module docstring)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sign(_cross(a, b, pts)).astype(np.int8)


def crossings(starts: np.ndarray, ends: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``N int8``: for each step ``starts[i] → ends[i]`` (``N×2``, ``(x, y)`` pixels), ``+1``
    when it crosses the segment ``a–b`` from its left to its right, ``−1`` from right to left,
    ``0`` when it does not cross (module docstring)."""
    p = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(ends, dtype=np.float64).reshape(-1, 2)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    before = np.sign(_cross(a, b, p))
    after = np.sign(_cross(a, b, q))
    opposite = before * after < 0
    # a and b on opposite sides of the step (or on it): the step meets the segment.
    meets = np.sign(_cross(p, q, a)) * np.sign(_cross(p, q, b)) <= 0
    return np.where(opposite & meets, after, 0).astype(np.int8)
