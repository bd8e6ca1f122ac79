"""Window-by-window segmentation equals the whole-image segmentation (Eq. 11–12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmask.segment.instances import (
    INFERENCE,
    SegmentConfig,
    segment_instances,
    smoothed_for_segmentation,
)
from xmask.segment.windows import TableBuffer, halo_for, segment_in_windows


def _scene(height: int, width: int, heads: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A smooth random stride-4 embedding and head points, with duplicates and border points."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randn(16, -(-height // 4), -(-width // 4), generator=gen) * 0.3
    rng = np.random.default_rng(seed)
    pts = rng.uniform((0, 0), (width, height), size=(heads, 2)).astype(np.float32)
    pts = np.concatenate([pts, pts[:5], [[width, height], [0.0, 0.0], [width, 7.5]]])
    return cells, pts.astype(np.float32)


@pytest.mark.parametrize(
    ("size", "heads", "core", "cfg"),
    [
        ((301, 419), 250, 64, INFERENCE),
        ((257, 260), 40, 32, INFERENCE),
        ((200, 180), 1, 64, INFERENCE),
        ((203, 150), 120, 48, SegmentConfig(lam=0.6, tau_g=0.8, kernel=11, sigma=1.5)),
        ((160, 170), 90, 32, SegmentConfig(tau_g=0.004)),
    ],
)
def test_windows_equal_the_whole_image(
    size: tuple[int, int], heads: int, core: int, cfg: SegmentConfig
) -> None:
    cells, pts = _scene(*size, heads, seed=heads)
    whole = segment_instances(smoothed_for_segmentation(cells, size, cfg), pts, None, cfg)
    scores = np.linspace(0.5, 1.0, len(pts)).astype(np.float32)
    buffer = TableBuffer()  # NaN wherever a window's Ẽ is not computed: any read would show
    buffer.view((*size, 16), torch.float32).fill(np.nan)
    tiled = segment_in_windows(cells, size, pts, scores, cfg, core=core, buffer=buffer)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_array_equal(tiled.area, whole.area)
    np.testing.assert_array_equal(tiled.forced, whole.forced)
    np.testing.assert_array_equal(tiled.radii, whole.radii)
    np.testing.assert_array_equal(tiled.scores, scores)
    if cfg.tau_g < 0.01:  # heads whose own pixel fails τ_g are forced to keep it
        assert whole.forced.any() and not whole.forced.all()


def test_the_buffer_grows_and_is_reused() -> None:
    buffer = TableBuffer()
    small = buffer.view((4, 5, 16), torch.float32)
    assert small.shape == (4, 5, 16) and small.flags.c_contiguous
    big = buffer.view((40, 50, 16), torch.float32)
    assert big.size == 32000 and np.shares_memory(big, buffer.view((40, 49, 16), torch.float32))
    assert buffer.view((2, 2, 16), torch.float64).dtype == np.float64
    cells, pts = _scene(120, 96, 30, seed=1)
    first = segment_in_windows(cells, (120, 96), pts, buffer=buffer)
    again = segment_in_windows(cells, (120, 96), pts, core=32, buffer=buffer)
    np.testing.assert_array_equal(first.labels, again.labels)


def test_no_heads_and_bad_core() -> None:
    cells, _ = _scene(64, 64, 1, seed=0)
    empty = segment_in_windows(cells, (64, 64), np.zeros((0, 2), np.float32))
    assert len(empty) == 0 and not empty.labels.any()
    with pytest.raises(ValueError, match="multiple of 4"):
        segment_in_windows(cells, (64, 64), np.zeros((0, 2), np.float32), core=30)
    assert halo_for(SegmentConfig(kernel=31)) == 24 and halo_for(INFERENCE) == 16
