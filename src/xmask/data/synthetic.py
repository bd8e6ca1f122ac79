"""Synthetic crowds: textured head-like blobs with exact points and exact instance label maps.

No crowd dataset has instance-mask ground truth, so segmentation, losses and speed are tested on
these images. Each head is an ellipse (slightly taller than wide) with hair and, for heads
facing the camera, a skin-coloured face, spherical shading and noise, on a textured
background (colour gradient, low-frequency blotches, stripes, pixel noise).

Occlusion
    Heads are drawn back to front in order of their centre ``(y, x)``: a head lower in the image
    is closer and is drawn on top. The label map holds, per pixel, the visible head. Centres are
    placed so that every head's own point pixel stays visible: no head drawn later covers the
    pixel of an earlier head's point, nor comes closer to it than ``min_visible·r`` (a margin
    that keeps a small patch around each point visible). Hence ``labels[floor(y), floor(x)]``
    is the point's own id for every point, and every id occurs in the map.

Points
    ``(x, y)`` in the grid of :mod:`xmask.geometry`, the centre of each ellipse, rounded to
    0.01 px so that the two-decimal point files of :func:`make_crowd_folder` hold them exactly.
    Point order is random (not the drawing order), as in real annotations.

Density
    ``n_heads`` heads exactly. The radius is drawn from ``radius_range`` or, when it is None,
    derived from the density (about 0.35 of the mean spacing ``sqrt(H·W/N)``). With
    ``perspective=True`` the radius grows linearly with ``y`` from the low to the high end of
    the range and the head density falls as ``1/r²``, as in real crowd scenes.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree

from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import save_label_map
from xmask.data.points_io import write_points_txt
from xmask.types import Sample

log = logging.getLogger(__name__)

Background = Literal["texture", "flat"]
ImageFormat = Literal["png", "jpg"]

_HAIR = np.array(
    [
        [0.06, 0.05, 0.05],
        [0.16, 0.11, 0.08],
        [0.30, 0.20, 0.12],
        [0.55, 0.42, 0.25],
        [0.45, 0.45, 0.45],
    ],
    dtype=np.float32,
)
_SKIN = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.88, 0.67, 0.53],
        [0.76, 0.57, 0.42],
        [0.55, 0.38, 0.26],
        [0.36, 0.24, 0.16],
    ],
    dtype=np.float32,
)
_LIGHT = np.array([-0.35, -0.45, 0.82], dtype=np.float32) / np.float32(
    math.sqrt(0.35**2 + 0.45**2 + 0.82**2)
)
_MAX_ROUNDS = 200


@dataclass
class _Heads:
    """Head parameters, one entry per head, all ``float64`` ``N`` arrays (``a``/``b`` semi-axes)."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: np.ndarray) -> _Heads:
        return _Heads(
            self.x[index], self.y[index], self.radius[index], self.a[index], self.b[index]
        )

    @staticmethod
    def concat(first: _Heads, second: _Heads) -> _Heads:
        return _Heads(
            *(
                np.concatenate([getattr(first, f), getattr(second, f)])
                for f in ("x", "y", "radius", "a", "b")
            )
        )


def auto_radius_range(
    size: tuple[int, int], n_heads: int, perspective: bool = False
) -> tuple[float, float]:
    """Radius range for ``n_heads`` on an image of ``size = (H, W)``.

    ``mid = 0.35·sqrt(H·W/N)`` (the mean spacing), clamped to ``[2, 24]`` px so sparse images
    do not get giant heads; the range is ``mid ± 30 %``, or ``0.5·mid … 1.5·mid`` with
    perspective (heads at the bottom three times the size of those at the top).
    """
    h, w = size
    spacing = math.sqrt(h * w / max(n_heads, 1))
    mid = min(max(0.35 * spacing, 2.0), 24.0)
    spread = 0.5 if perspective else 0.3
    return max(1.0, (1.0 - spread) * mid), (1.0 + spread) * mid


def _sample_heads(
    n: int,
    size: tuple[int, int],
    radius_range: tuple[float, float],
    perspective: bool,
    rng: np.random.Generator,
) -> _Heads:
    """``n`` candidate heads: centres, radii and semi-axes (centres rounded to 0.01 px)."""
    h, w = size
    lo, hi = radius_range
    x = rng.uniform(0.0, w, n)
    if perspective and hi > lo:
        # density ∝ 1/r(y)² with r(y) = lo + (hi − lo)·y/H: inverse CDF of y through 1/r.
        inv_r = 1.0 / lo - rng.uniform(0.0, 1.0, n) * (1.0 / lo - 1.0 / hi)
        y = (1.0 / inv_r - lo) / (hi - lo) * h
        radius = (lo + (hi - lo) * y / h) * rng.uniform(0.9, 1.1, n)
    else:
        y = rng.uniform(0.0, h, n)
        radius = rng.uniform(lo, hi, n)
    x = np.minimum(np.round(x, 2), w - 0.01)
    y = np.minimum(np.round(y, 2), h - 0.01)
    return _Heads(
        x, y, radius, radius * rng.uniform(0.85, 1.0, n), radius * rng.uniform(1.0, 1.15, n)
    )


def _conflicts(heads: _Heads, pairs: np.ndarray, min_visible: float) -> np.ndarray:
    """Which pairs ``(i, j)`` break visibility: the front head (later in ``(y, x)`` order)
    comes within ``min_visible·r`` of the pixel centre of the back head's point."""
    i, j = pairs[:, 0], pairs[:, 1]
    j_front = (heads.y[j] > heads.y[i]) | ((heads.y[j] == heads.y[i]) & (heads.x[j] >= heads.x[i]))
    front = np.where(j_front, j, i)
    back = np.where(j_front, i, j)
    margin = min_visible * heads.radius[back]
    du = (np.floor(heads.x[back]) + 0.5 - heads.x[front]) / (heads.a[front] + margin)
    dv = (np.floor(heads.y[back]) + 0.5 - heads.y[front]) / (heads.b[front] + margin)
    same = (heads.x[i] == heads.x[j]) & (heads.y[i] == heads.y[j])
    return (du * du + dv * dv <= 1.0) | same


def _place_heads(
    n: int,
    size: tuple[int, int],
    radius_range: tuple[float, float],
    perspective: bool,
    min_visible: float,
    rng: np.random.Generator,
) -> _Heads:
    """Random sequential placement: candidates conflicting with placed heads (or with earlier
    candidates of the same batch) are rejected until ``n`` heads are placed."""
    placed = _sample_heads(0, size, radius_range, perspective, rng)
    # farthest centre distance at which two heads can conflict (radius jitter ≤ 1.1, b ≤ 1.15·r)
    reach = 1.1 * radius_range[1] * (1.15 + min_visible) + 1.0
    for rounds in range(1, _MAX_ROUNDS + 1):
        deficit = n - len(placed)
        if deficit == 0:
            log.debug("placed %d heads in %d rounds", n, rounds - 1)
            return placed
        candidates = _sample_heads(max(2 * deficit, 16), size, radius_range, perspective, rng)
        both = _Heads.concat(placed, candidates)
        tree = cKDTree(np.stack([both.x, both.y], axis=1))
        pairs = tree.query_pairs(reach, output_type="ndarray")
        pairs = pairs[pairs.max(axis=1) >= len(placed)]
        bad = pairs[_conflicts(both, pairs, min_visible)]
        rejected = np.zeros(len(both), dtype=bool)
        rejected[bad.max(axis=1)] = True  # the candidate (or the later of two candidates)
        accepted = np.flatnonzero(~rejected[len(placed) :])[:deficit] + len(placed)
        placed = _Heads.concat(placed, both.take(accepted))
    raise ValueError(
        f"could not place {n} visible heads of radius {radius_range} on a {size[1]}×{size[0]} "
        f"image ({len(placed)} placed); lower n_heads, the radius or min_visible"
    )


def _head_pixels(heads: _Heads, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies in each ellipse: ``(P int64 head index, P int64 flat index)``."""
    h, w = size
    x0 = np.clip(np.ceil(heads.x - heads.a - 0.5), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(heads.x + heads.a - 0.5), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(heads.y - heads.b - 0.5), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(heads.y + heads.b - 0.5), -1, h - 1).astype(np.int64)
    nx = np.maximum(x1 - x0 + 1, 0)
    ny = np.maximum(y1 - y0 + 1, 0)
    boxes = nx * ny
    owner = np.repeat(np.arange(len(heads)), boxes)
    local = np.arange(owner.size) - np.repeat(np.cumsum(boxes) - boxes, boxes)
    width = np.maximum(nx[owner], 1)
    xs = x0[owner] + local % width
    ys = y0[owner] + local // width
    du = (xs + 0.5 - heads.x[owner]) / heads.a[owner]
    dv = (ys + 0.5 - heads.y[owner]) / heads.b[owner]
    inside = du * du + dv * dv <= 1.0
    return owner[inside], (ys * w + xs)[inside]


def _smooth_noise(
    size: tuple[int, int], cell: float, channels: int, rng: np.random.Generator
) -> np.ndarray:
    """``H×W×channels float32`` zero-mean unit-ish noise, smooth at the scale of ``cell`` px."""
    h, w = size
    grid = rng.standard_normal((1, channels, math.ceil(h / cell) + 1, math.ceil(w / cell) + 1))
    up = torch.nn.functional.interpolate(
        torch.from_numpy(grid.astype(np.float32)), size=(h, w), mode="bicubic", align_corners=False
    )
    return up[0].permute(1, 2, 0).numpy()


def _background(size: tuple[int, int], kind: Background, rng: np.random.Generator) -> np.ndarray:
    """``H×W×3 float32`` background in roughly ``[0, 1]``."""
    h, w = size
    c0 = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(c0, (h, w, 3)) + rng.normal(0.0, 0.02, (h, w, 3)).astype(np.float32)
    if kind != "texture":
        raise ValueError(f"background must be 'texture' or 'flat', got {kind!r}")
    c1 = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + np.float32(0.5)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    t = xs * math.cos(phi) + ys * math.sin(phi)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    image += 0.08 * _smooth_noise(size, rng.uniform(16.0, 64.0), 3, rng)
    psi = rng.uniform(0.0, math.pi)
    period = rng.uniform(6.0, 40.0)
    stripes = np.sin((xs * math.cos(psi) + ys * math.sin(psi)) * (2.0 * math.pi / period))
    image += rng.uniform(0.02, 0.08) * stripes[..., None]
    image += rng.normal(0.0, 0.03, (h, w, 3)).astype(np.float32)
    return image


def _head_colours(
    heads: _Heads, owner: np.ndarray, flat: np.ndarray, width: int, rng: np.random.Generator
) -> np.ndarray:
    """``P×3 float32`` colour of each visible head pixel (``owner`` = head, ``flat`` = pixel)."""
    n = len(heads)
    hair = _HAIR[rng.integers(0, len(_HAIR), n)] * rng.uniform(0.8, 1.2, (n, 1))
    skin = _SKIN[rng.integers(0, len(_SKIN), n)] * rng.uniform(0.9, 1.1, (n, 1))
    facing = rng.random(n) < 0.5
    face_line = np.where(facing, rng.uniform(-0.5, 0.0, n), 2.0)
    theta = rng.uniform(0.0, math.pi, n)
    freq = rng.uniform(2.0, 5.0, n)
    phase = rng.uniform(0.0, 2.0 * math.pi, n)

    u = ((flat % width + 0.5 - heads.x[owner]) / heads.a[owner]).astype(np.float32)
    v = ((flat // width + 0.5 - heads.y[owner]) / heads.b[owner]).astype(np.float32)
    nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    light = np.clip(_LIGHT[0] * u + _LIGHT[1] * v + _LIGHT[2] * nz, 0.0, 1.0)
    shade = 0.35 + 0.65 * light
    on_face = v > face_line[owner]
    along = u * np.cos(theta[owner]) + v * np.sin(theta[owner])
    strands = 1.0 + 0.15 * np.sin(
        along * freq[owner] * math.pi * heads.radius[owner] / 4.0 + phase[owner]
    )
    base = np.where(on_face[:, None], skin[owner], hair[owner] * strands[:, None])
    noise = rng.normal(0.0, 0.03, (owner.size, 3))
    return (base * shade[:, None] + noise).astype(np.float32)


def make_crowd(
    height: int,
    width: int,
    n_heads: int,
    *,
    radius_range: tuple[float, float] | None = None,
    perspective: bool = False,
    background: Background = "texture",
    min_visible: float = 0.3,
    seed: int | np.random.Generator | None = None,
    name: str = "synthetic.png",
) -> Sample:
    """A synthetic crowd image with its exact points and instance label map.

    Args:
        height: image rows ``H``.
        width: image columns ``W``.
        n_heads: number of heads (exactly this many points).
        radius_range: ``(lo, hi)`` head radius in px (``lo >= 1``); None: from the density
            (:func:`auto_radius_range`).
        perspective: radius grows with ``y`` from ``lo`` to ``hi``; density ``∝ 1/r²``.
        background: ``"texture"`` (gradient, blotches, stripes, noise) or ``"flat"``.
        min_visible: margin, as a fraction of a head's radius, that no head in front of it may
            enter around its point pixel (0: only the point pixel itself is kept visible).
        seed: an int, a ``numpy.random.Generator`` or None (fresh entropy).
        name: the sample's name.

    Returns:
        :class:`~xmask.types.Sample` with ``image`` ``H×W×3 uint8``, ``points`` ``N×2 float32``
        ``(x, y)`` and ``labels`` ``H×W int32`` (0 background, ``k`` = ``points[k − 1]``).

    Raises:
        ValueError: bad arguments, or the heads cannot all be placed visibly (too dense).
    """
    if height < 1 or width < 1 or n_heads < 0:
        raise ValueError(
            f"need height, width >= 1 and n_heads >= 0, got {height}, {width}, {n_heads}"
        )
    size = (height, width)
    rng = np.random.default_rng(seed)
    lo, hi = radius_range or auto_radius_range(size, n_heads, perspective)
    if not 1.0 <= lo <= hi:
        raise ValueError(f"radius_range must satisfy 1 <= lo <= hi, got {(lo, hi)}")
    heads = _place_heads(n_heads, size, (lo, hi), perspective, min_visible, rng)
    heads = heads.take(np.lexsort((heads.x, heads.y)))  # drawing order: back to front

    owner, flat = _head_pixels(heads, size)
    depth = np.zeros(height * width, dtype=np.int64)
    np.maximum.at(depth, flat, owner + 1)  # the last-drawn head wins each pixel
    visible = np.flatnonzero(depth)
    front = depth[visible] - 1

    colour = _background(size, background, rng).reshape(-1, 3)
    colour[visible] = _head_colours(heads, front, visible, width, rng)
    image = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)

    ids = np.zeros(n_heads + 1, dtype=np.int32)
    ids[1:] = rng.permutation(n_heads) + 1  # label of each head in drawing order
    points = np.zeros((n_heads, 2), dtype=np.float32)
    points[ids[1:] - 1] = np.stack([heads.x, heads.y], axis=1)
    labels = ids[depth].reshape(height, width)
    return Sample(image=image, points=points, name=name, labels=labels)


def _encode_image(image: np.ndarray, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buffer, format="PNG")
    elif image_format == "jpg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    return buffer.getvalue()


def make_crowd_folder(
    out_dir: str | Path,
    n_images: int,
    *,
    height: int = 256,
    width: int = 256,
    n_heads: int | tuple[int, int] = (10, 100),
    radius_range: tuple[float, float] | None = None,
    perspective: bool = False,
    background: Background = "texture",
    seed: int = 0,
    image_format: ImageFormat = "png",
    masks: bool = True,
    prefix: str = "syn_",
) -> list[Path]:
    """Write synthetic crowds in the folder format of :class:`xmask.data.readers.FolderDataset`.

    Writes ``out_dir/PREFIXnnnn.png`` (or ``.jpg``), the points ``out_dir/PREFIXnnnn.txt``
    (``x y`` per line, two decimals, exact since points lie on a 0.01 px grid) and, with
    ``masks``, ``out_dir/masks/PREFIXnnnn.png`` (16-bit label map). Every file is written
    atomically. Image ``i`` depends only on ``seed`` and ``i``.

    Args:
        out_dir: target folder (created if missing).
        n_images: number of images.
        height: image rows.
        width: image columns.
        n_heads: heads per image, or ``(lo, hi)`` drawn uniformly per image (inclusive).
        radius_range: see :func:`make_crowd`.
        perspective: see :func:`make_crowd`.
        background: see :func:`make_crowd`.
        seed: base seed.
        image_format: ``"png"`` (lossless) or ``"jpg"`` (quality 95).
        masks: also write the label maps.
        prefix: file name prefix.

    Returns:
        The image paths, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = (n_heads, n_heads) if isinstance(n_heads, int) else n_heads
    paths: list[Path] = []
    for index, child in enumerate(np.random.SeedSequence(seed).spawn(n_images)):
        rng = np.random.default_rng(child)
        stem = f"{prefix}{index:04d}"
        path = out / f"{stem}.{image_format}"
        sample = make_crowd(
            height,
            width,
            int(rng.integers(lo, hi + 1)),
            radius_range=radius_range,
            perspective=perspective,
            background=background,
            seed=rng,
            name=path.name,
        )
        atomic_write_bytes(path, _encode_image(sample.image, image_format))
        write_points_txt(out / f"{stem}.txt", sample.points)
        if masks and sample.labels is not None:
            save_label_map(out / "masks" / f"{stem}.png", sample.labels)
        paths.append(path)
    log.info("wrote %d synthetic images to %s", n_images, out)
    return paths
