"""Co-located heads (several points in one pixel) split their first member's circle by angle
(:func:`xmask.geometry.circles.circles_of`), checked against a literal, head-by-head reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xmask.geometry.circles import circles_of


def literal_shared_circles(points: np.ndarray, radii: np.ndarray, size: tuple[int, int]) -> list:
    """Head by head, the circle pixels :func:`circles_of` documents: a head alone in its pixel
    keeps its circle; the ``k`` heads of one pixel split the circle of the first of them (its
    point pixel to that first head) into ``k`` runs by angle around it (ties row-major), run
    ``m`` to the ``m``-th of them, each keeping what lies within its own radius. Returns, per
    head, its ``(flat, dist2)`` pairs in row-major order."""
    h, w = size
    half = np.float32(0.5)
    cell = np.minimum(np.floor(points).astype(int), [w - 1, h - 1])
    pixel = cell[:, 1] * w + cell[:, 0]

    def dist2(i: int, x: int, y: int) -> np.float32:
        dx, dy = np.float32(x) + half - points[i, 0], np.float32(y) + half - points[i, 1]
        return dx * dx + dy * dy

    def disc(i: int) -> list:
        every = ((y * w + x, dist2(i, x, y)) for y in range(h) for x in range(w))
        return [(f, d) for f, d in every if d <= radii[i] * radii[i]]

    out = []
    for i in range(len(points)):
        group = np.flatnonzero(pixel == pixel[i])
        if len(group) == 1:
            out.append(disc(i))
            continue
        first, rank = group[0], int(np.flatnonzero(group == i)[0])
        ring = [f for f, _ in disc(first) if f != pixel[first]]
        angle = [
            math.atan2(
                f // w + 0.5 - float(points[first, 1]), f % w + 0.5 - float(points[first, 0])
            )
            for f in ring
        ]
        ring = [ring[q] for q in sorted(range(len(ring)), key=lambda q: (angle[q], ring[q]))]
        mine = [f for q, f in enumerate(ring) if q * len(group) // len(ring) == rank]
        if rank == 0 and pixel[first] in [f for f, _ in disc(first)]:
            mine.append(pixel[first])
        own = {f: d for f, d in disc(i)}
        out.append(sorted((f, own[f]) for f in mine if f in own))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_circles_of_splits_co_located_heads_as_documented(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w, n = 20, 24, 12
    points = rng.uniform((0, 0), (w, h), (n, 2)).astype(np.float32)
    points[rng.integers(0, n, 5)] = points[rng.integers(0, n, 5)]  # exact duplicates
    same_pixel = rng.integers(0, n, 3)  # other positions in an occupied pixel
    points[same_pixel] = np.floor(points[rng.integers(0, n, 3)]) + rng.uniform(0, 1, (3, 2))
    points = np.clip(points, 0, [w - 0.01, h - 0.01]).astype(np.float32)
    radii = rng.uniform(1.0, 7.0, n).astype(np.float32)
    pixels = circles_of(points, radii, (h, w)).pixels
    offsets = pixels.offsets.numpy()
    for i, want in enumerate(literal_shared_circles(points, radii, (h, w))):
        block = slice(offsets[i], offsets[i + 1])
        assert (pixels.point.numpy()[block] == i).all()
        assert pixels.flat.numpy()[block].tolist() == [f for f, _ in want], i
        np.testing.assert_array_equal(
            pixels.dist2.numpy()[block], np.array([d for _, d in want], np.float32)
        )
        flat = pixels.flat.numpy()[block]
        np.testing.assert_array_equal(pixels.x.numpy()[block], flat % w)
        np.testing.assert_array_equal(pixels.y.numpy()[block], flat // w)
