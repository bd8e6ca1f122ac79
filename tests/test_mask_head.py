"""Mask head, Gaussian smoothing (Eq. 2–5) and centre sampling (Eq. 9) against references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as nnf

from xmask.geometry.sampling import sample_centres, sample_table
from xmask.models import ModelConfig, build_model
from xmask.models.mask_head import MaskHead, coord_channels
from xmask.segment.smoothing import (
    GaussianSmoothing,
    gaussian_kernel1d,
    smoothed_table,
    upsample_embedding,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_kernel_is_eq2() -> None:
    g = gaussian_kernel1d(7, 1.5, torch.float64)
    u = torch.arange(-3, 4, dtype=torch.float64)
    expected = torch.tensor(
        [math.exp(-(v * v) / (2 * 1.5**2)) for v in u.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(g, expected / expected.sum())
    assert g.argmax() == 3 and torch.equal(g, g.flip(0))


@pytest.mark.parametrize(("kernel", "sigma"), [(0, 1.0), (4, 1.0), (7, 0.0)])
def test_kernel_rejects_bad_values(kernel: int, sigma: float) -> None:
    with pytest.raises(ValueError):
        gaussian_kernel1d(kernel, sigma)


@pytest.mark.parametrize(("kernel", "sigma"), [(7, 1.5), (7, 3.0), (5, 0.7), (1, 1.0)])
def test_separable_smoothing_equals_dense_2d_gaussian(kernel: int, sigma: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    g = gaussian_kernel1d(kernel, sigma, torch.float64)
    dense = (g[:, None] * g[None, :]).expand(3, 1, kernel, kernel)  # G(u, v) = g(u)·g(v)
    expected = nnf.conv2d(x, dense, padding=kernel // 2, groups=3)
    smooth = GaussianSmoothing(3, kernel, sigma).double()
    torch.testing.assert_close(smooth(x), expected)
    assert not list(smooth.parameters()) and not smooth.state_dict()  # fixed, not stored


def test_smoothing_keeps_a_constant_away_from_the_border() -> None:
    x = torch.full((1, 2, 20, 20), 0.3)
    out = GaussianSmoothing(2, 7, 1.5)(x)
    torch.testing.assert_close(out[..., 3:-3, 3:-3], x[..., 3:-3, 3:-3])


def linear_weights(n_pixels: int, n_cells: int, stride: int = 4) -> torch.Tensor:
    """``n_pixels×n_cells``: pixel centre ``c + 0.5`` read linearly between the two nearest
    cell centres ``stride·j + stride/2`` (the end cells' values held beyond them)."""
    out = torch.zeros(n_pixels, n_cells, dtype=torch.float64)
    for c in range(n_pixels):
        u = min(max((c + 0.5 - stride / 2) / stride, 0.0), n_cells - 1.0)
        j = min(math.floor(u), n_cells - 2) if n_cells > 1 else 0
        t = u - j
        out[c, j] += 1 - t
        if n_cells > 1:
            out[c, j + 1] += t
    return out


def test_upsampling_reads_cell_values_at_cell_centres() -> None:
    torch.manual_seed(1)
    cells = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    up = upsample_embedding(cells, (18, 23))  # ceil(18/4) = 5, ceil(23/4) = 6
    assert up.shape == (1, 2, 18, 23)
    expected = linear_weights(18, 5) @ cells @ linear_weights(23, 6).T
    torch.testing.assert_close(up, expected)
    with pytest.raises(ValueError, match="stride-4 grid"):
        upsample_embedding(cells, (30, 23))


def test_centres_of_constant_instances_are_the_constants() -> None:
    emb = torch.zeros(4, 12, 16)
    emb[:, 2:7, 3:9] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]
    emb[:, 7:12, 9:16] = torch.tensor([-1.0, 0.5, 0.0, 2.0])[:, None, None]
    points = torch.tensor([[5.3, 4.1], [3.5, 2.5], [12.0, 9.7], [15.9, 11.9]])  # the last two
    c = sample_centres(emb, points)  # lie on the second instance, one on the image corner
    torch.testing.assert_close(c[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(c[1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(c[2], torch.tensor([-1.0, 0.5, 0.0, 2.0]))
    torch.testing.assert_close(c[3], torch.tensor([-1.0, 0.5, 0.0, 2.0]))
    assert sample_centres(emb, torch.zeros(0, 2)).shape == (0, 4)


def test_centre_sampling_matches_the_papers_formula() -> None:
    """Eq. 9 with ``align_corners=True`` at index coordinates ``p − 0.5``."""
    torch.manual_seed(2)
    emb = torch.randn(3, 9, 14, dtype=torch.float64)
    points = torch.tensor([[0.5, 0.5], [3.2, 7.9], [13.5, 8.5], [6.77, 1.01]], dtype=torch.float64)
    h, w = 9, 14
    index = points - 0.5
    grid = 2 * index / torch.tensor([w - 1, h - 1], dtype=torch.float64) - 1
    expected = nnf.grid_sample(emb[None], grid.view(1, 1, -1, 2), align_corners=True)[0, :, 0].T
    torch.testing.assert_close(sample_centres(emb, points), expected)


def test_centre_gradient_reaches_the_four_neighbouring_pixels() -> None:
    emb = torch.randn(2, 8, 8, requires_grad=True)
    c = sample_centres(emb, torch.tensor([[3.7, 5.2]]))  # pixel centres x 3.5, 4.5; y 4.5, 5.5
    c.sum().backward()
    assert emb.grad is not None
    touched = (emb.grad[0] != 0).nonzero().tolist()
    assert touched == [[4, 3], [4, 4], [5, 3], [5, 4]]
    wx, wy = 0.2, 0.7  # bilinear weights of the right column and the lower row
    expected = torch.tensor([[(1 - wy) * (1 - wx), (1 - wy) * wx], [wy * (1 - wx), wy * wx]])
    torch.testing.assert_close(emb.grad[0, 4:6, 3:5], expected)


def test_coord_channels_span_minus_one_to_one() -> None:
    x = coord_channels(torch.zeros(2, 3, 4, 5))
    assert x.shape == (2, 5, 4, 5)
    torch.testing.assert_close(x[0, 3, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(x[1, 4, :, 2], torch.linspace(-1, 1, 4))
    assert coord_channels(torch.zeros(1, 1, 1, 1))[0, 1:].abs().sum() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_mask_head_contract(device: str) -> None:
    head = MaskHead(32, 16, 16).to(device)
    out = head(torch.randn(2, 32, 5, 7, device=device))
    assert out.embedding.shape == (2, 16, 10, 14) and out.embedding.dtype == torch.float32
    torch.testing.assert_close(
        out.embedding.norm(dim=1), torch.ones(2, 10, 14, device=device), rtol=1e-5, atol=1e-5
    )


def test_model_with_mask_head_returns_an_embedding_on_the_logit_grid() -> None:
    cfg = ModelConfig(weights=None, neck_channels=32, head_channels=32, mask_channels=16)
    model = build_model(cfg).eval()
    image = torch.rand(1, 3, 50, 70)
    assert model(image).embedding is None
    model.add_mask_head()
    assert cfg.mask_head and model.add_mask_head() is model.mask_head
    out = model(image)
    assert out.embedding is not None and out.embedding.shape == (1, 16, 13, 18)
    assert out.logits.shape[-2:] == out.embedding.shape[-2:]
    again = build_model(cfg)  # the config now builds the head directly
    assert again.mask_head is not None
    assert set(again.state_dict()) == set(model.state_dict())


@pytest.mark.parametrize(
    ("size", "kernel", "sigma"),
    [
        ((18, 23), 7, 1.5),
        ((64, 60), 7, 3.0),
        ((5, 9), 7, 3.0),
        ((3, 4), 5, 1.0),
        ((33, 40), 19, 3.0),
    ],
)
def test_banded_table_equals_upsample_then_smooth(
    size: tuple[int, int], kernel: int, sigma: float
) -> None:
    torch.manual_seed(3)
    cells = torch.randn(3, math.ceil(size[0] / 4), math.ceil(size[1] / 4), dtype=torch.float64)
    literal = GaussianSmoothing(3, kernel, sigma).double()(upsample_embedding(cells[None], size))
    torch.testing.assert_close(
        smoothed_table(cells, size, kernel, sigma), literal[0].permute(1, 2, 0)
    )
    with pytest.raises(ValueError, match="stride-4 grid"):
        smoothed_table(cells, (size[0] + 8, size[1]), kernel, sigma)


def test_table_sampling_equals_grid_sampling() -> None:
    torch.manual_seed(4)
    emb = torch.randn(5, 11, 13, dtype=torch.float64)
    points = torch.tensor(
        [[0.0, 0.0], [0.4, 10.9], [13.0, 11.0], [6.5, 5.5], [3.21, 7.77], [12.9, 0.2]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        sample_table(emb.permute(1, 2, 0).contiguous(), points), sample_centres(emb, points)
    )
