"""Instance segmentation (Eq. 11–12) and pseudo-masks against a literal per-pixel reference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from xmask.segment.instances import (
    INFERENCE,
    PSEUDO,
    SegmentConfig,
    ignore_disks,
    pseudo_masks,
    segment_instances,
    smoothed_for_segmentation,
)

F32 = np.float32


def table(emb: torch.Tensor) -> torch.Tensor:
    """``D×H×W`` → the pixel-major ``H×W×D`` table the segmentation reads."""
    return emb.permute(1, 2, 0).contiguous()


def literal_segmentation(
    emb: torch.Tensor, points: np.ndarray, cfg: SegmentConfig, whole: np.ndarray | None = None
) -> np.ndarray:
    """Per pixel: among heads whose circle holds it and whose energy is below τ_g (or whose
    whole circle is taken), the lowest energy wins, ties to the lower index; each head's own
    point pixel goes to it first. Points must lie in distinct pixels."""
    _, h, w = emb.shape
    n = len(points)
    r_max = 0.5 * min(h, w)
    labels = np.zeros((h, w), np.int32)
    best = np.full((h, w), np.inf)
    for i in range(n):
        others = [math.dist(points[i], q) for j, q in enumerate(points) if j != i]
        r = min(max(min(others) if others else cfg.lone * min(h, w), cfg.r_min), r_max)
        x, y = float(points[i, 0]) - 0.5, float(points[i, 1]) - 0.5
        grid = torch.tensor([[[[2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1]]]], dtype=emb.dtype)
        c = nnf.grid_sample(emb[None], grid, align_corners=True, padding_mode="border")[0, :, 0, 0]
        for py in range(h):
            for px in range(w):
                dx = F32(px + 0.5) - F32(points[i, 0])
                dy = F32(py + 0.5) - F32(points[i, 1])
                d2 = dx * dx + dy * dy
                if d2 > F32(r) * F32(r):
                    continue
                energy = float(torch.linalg.vector_norm(emb[:, py, px] - c))
                energy += cfg.lam * float(d2) / (r + cfg.eps) ** 2
                passes = energy < cfg.tau_g or (whole is not None and whole[i])
                if passes and energy < best[py, px]:
                    best[py, px], labels[py, px] = energy, i + 1
    for i in range(n - 1, -1, -1):
        labels[min(int(points[i, 1]), h - 1), min(int(points[i, 0]), w - 1)] = i + 1
    return labels


def blob_embedding(points: np.ndarray, size: tuple[int, int], seed: int) -> torch.Tensor:
    """A ``4×H×W`` unit embedding: noise plus one random code per Voronoi cell of the points."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    codes = nnf.normalize(torch.randn(len(points) + 1, 4, generator=gen), dim=1)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    dist = (xx[None] - points[:, 0, None, None]) ** 2 + (yy[None] - points[:, 1, None, None]) ** 2
    owner = torch.from_numpy(dist.argmin(axis=0))
    emb = codes[owner + 1].permute(2, 0, 1) + 0.4 * torch.randn(4, h, w, generator=gen)
    return nnf.normalize(emb, dim=0)


POINTS = np.array([[4.2, 5.1], [9.7, 6.3], [15.5, 4.5], [12.1, 12.9], [3.3, 13.7]], F32)


LITERAL = [replace(INFERENCE, connected=False), PSEUDO, SegmentConfig(0.3, 0.6, connected=False)]
"""Eq. 11–12 as written (no connected-mask clean-up, tested on its own below)."""


@pytest.mark.parametrize("cfg", LITERAL)
def test_matches_literal_eq11_eq12(cfg: SegmentConfig) -> None:
    size = (17, 21)
    for seed in range(3):
        emb = blob_embedding(POINTS, size, seed)
        result = segment_instances(table(emb), POINTS, cfg=cfg)
        np.testing.assert_array_equal(result.labels, literal_segmentation(emb, POINTS, cfg))
        assert (result.area >= 1).all() and len(result) == 5
        np.testing.assert_array_equal(result.scores, np.ones(5, F32))


def test_threshold_and_lambda_matter() -> None:
    size = (17, 21)
    emb = blob_embedding(POINTS, size, 0)
    tight = segment_instances(table(emb), POINTS, cfg=SegmentConfig(tau_g=0.3)).area.sum()
    loose = segment_instances(table(emb), POINTS, cfg=SegmentConfig(tau_g=3.0)).area.sum()
    flat = segment_instances(table(emb), POINTS, cfg=SegmentConfig(lam=0.0, tau_g=3.0)).labels
    assert tight < loose
    assert (flat > 0).sum() >= loose  # every circle pixel passes when τ_g is large


def test_every_head_is_segmented_at_high_density() -> None:
    """3,000 heads on a 256×256 image (about 1 px apart on average), duplicates included."""
    gen = np.random.default_rng(0)
    points = (gen.random((3000, 2)) * 256).astype(F32)
    points[2990:] = points[:10]  # ten exact duplicates
    emb = nnf.normalize(torch.randn(16, 256, 256), dim=0)
    result = segment_instances(table(emb), points, cfg=INFERENCE)
    assert len(result) == 3000 and (result.area >= 1).all()
    assert set(np.unique(result.labels)) - {0} == set(range(1, 3001))


def test_empty_and_one_point() -> None:
    emb = nnf.normalize(torch.randn(4, 40, 60), dim=0)
    none = segment_instances(table(emb), np.zeros((0, 2), F32))
    assert none.labels.shape == (40, 60) and not none.labels.any() and none.area.shape == (0,)
    constant = torch.zeros(4, 40, 60)
    constant[0] = 1.0
    one = segment_instances(table(constant), np.array([[30.0, 20.0]], F32))
    assert one.radii[0] == 10.0  # min(H, W) / 4
    # constant embedding: E = λ·d²/r² < 1.1 on the whole circle (λ = 0.8)
    assert one.area[0] == (one.labels == 1).sum() > 300


def test_whole_circle_gate() -> None:
    size = (17, 21)
    emb = blob_embedding(POINTS, size, 1)
    whole = np.array([True, False, False, True, False])
    cfg = SegmentConfig(tau_g=0.5, connected=False)
    gated = segment_instances(table(emb), POINTS, cfg=cfg, whole_circle=whole)
    np.testing.assert_array_equal(gated.labels, literal_segmentation(emb, POINTS, cfg, whole))


def test_pseudo_masks_filter_by_probability() -> None:
    size = (17, 21)
    emb = blob_embedding(POINTS, size, 2)
    probs = np.array([0.05, 0.5, 0.97, 0.92, 0.99], F32)
    pm = pseudo_masks(table(emb), POINTS, probs, p_low=0.1, p_high=0.95)
    assert len(pm.instances) == 4 and pm.valid.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(pm.instances.scores, probs[1:])
    expected = segment_instances(table(emb), POINTS[1:], probs[1:], cfg=PSEUDO)
    np.testing.assert_array_equal(pm.instances.labels, expected.labels)
    gated = pseudo_masks(table(emb), POINTS, probs, gate=0.5)
    whole = np.array([True, False, False, False])
    np.testing.assert_array_equal(
        gated.instances.labels, literal_segmentation(emb, POINTS[1:], PSEUDO, whole)
    )


def test_ignore_disks() -> None:
    mask = ignore_disks(np.array([[10.0, 10.0], [0.0, 30.0]], F32), (32, 40), radius=4.0)
    yy, xx = np.mgrid[0:32, 0:40] + 0.5
    expected = ((xx - 10) ** 2 + (yy - 10) ** 2 <= 16) | ((xx - 0) ** 2 + (yy - 30) ** 2 <= 16)
    np.testing.assert_array_equal(mask, expected)
    assert not ignore_disks(np.zeros((0, 2), F32), (5, 5)).any()


def test_smoothed_for_segmentation_is_a_pixel_major_table() -> None:
    emb = torch.randn(16, 5, 7)
    out = smoothed_for_segmentation(emb, (18, 27), INFERENCE)
    assert out.shape == (18, 27, 16) and out.is_contiguous()
