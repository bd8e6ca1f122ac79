"""Tests of :mod:`xmask.losses.p2r` against a slow, obvious reference.

The reference below loops over every cell and every point in plain Python (float64 ``math``,
no k-d tree, none of the module's helpers): nearest point by strict ``<`` (ties to the lowest
point index), radius, cost, the cheapest cell by strict ``<`` (ties to the lowest cell index),
and cell validity by counting the valid in-image pixels of each block. Only the final weighted
BCE sum is a torch expression, so that autograd gives the reference gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as nnf
from torch.utils._python_dispatch import TorchDispatchMode

from xmask.losses import P2RConfig, P2RResult, cell_validity, p2r_loss

CFG = P2RConfig()
SEEDS = [0, 1, 2]
GRIDS = [(16, 16), (13, 21)]  # (h, w) cells

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def ref_cell_valid(valid: torch.Tensor, h: int, w: int, s: int) -> list[float]:
    """Row-major ``h·w`` list: 1.0 where at least half of the block's in-image pixels are valid."""
    H, W = valid.shape
    out = []
    for i in range(h):
        for j in range(w):
            good = present = 0
            for r in range(s * i, s * i + s):
                for c in range(s * j, s * j + s):
                    if r < H and c < W:
                        present += 1
                        good += bool(valid[r, c])
            out.append(1.0 if present and 2 * good >= present else 0.0)
    return out


def ref_targets(
    logits: torch.Tensor, points: torch.Tensor, pw: torch.Tensor | None, cfg: P2RConfig
) -> tuple[list[float], list[float], int]:
    """Per-cell target and weight lists (row-major) of one image, and its unmatched count."""
    _, h, w = logits.shape
    s = cfg.stride
    pts = [(float(x), float(y)) for x, y in points.tolist()]
    lg = [float(v) for v in logits.reshape(-1).tolist()]
    n_cells = h * w
    if not pts:
        return [0.0] * n_cells, [cfg.empty_weight] * n_cells, 0
    owner, dist = [-1] * n_cells, [math.inf] * n_cells
    for i in range(h):
        for j in range(w):
            cx, cy = s * j + s / 2, s * i + s / 2
            best, best_d = -1, math.inf
            for k, (px, py) in enumerate(pts):
                d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
                if d < best_d:
                    best, best_d = k, d
            if best_d < cfg.max_radius:
                owner[i * w + j], dist[i * w + j] = best, best_d
    target, weight = [0.0] * n_cells, [1.0] * n_cells
    unmatched = 0
    for k in range(len(pts)):
        mine = [c for c in range(n_cells) if owner[c] == k]
        if not mine:
            unmatched += 1
            continue
        radius = min(max(max(dist[c] for c in mine), cfg.min_radius), cfg.max_radius)
        best_c, best_cost = -1, math.inf
        for c in mine:
            cost = cfg.cost_point * dist[c] / radius - cfg.cost_class * lg[c]
            if cost < best_cost:
                best_c, best_cost = c, cost
        target[best_c] = 1.0
        scale = 1.0 if pw is None else float(pw[k])
        for c in mine:
            weight[c] = (cfg.positive_weight if c == best_c else 1.0) * scale
    return target, weight, unmatched


def ref_loss(
    logits: torch.Tensor,
    points: list[torch.Tensor],
    valid: torch.Tensor | None = None,
    weights: list[torch.Tensor] | None = None,
    cfg: P2RConfig = CFG,
) -> tuple[torch.Tensor, int, int]:
    """(loss in float64, positives, unmatched) of a batch, by the loops above."""
    batch, _, h, w = logits.shape
    targets, cell_weights, positives, unmatched = [], [], 0, 0
    for b in range(batch):
        pw = None if weights is None else weights[b]
        t, wt, u = ref_targets(logits[b].detach(), points[b], pw, cfg)
        if valid is not None:
            wt = [
                a * v for a, v in zip(wt, ref_cell_valid(valid[b], h, w, cfg.stride), strict=True)
            ]
        targets.append(t)
        cell_weights.append(wt)
        positives += int(sum(t))
        unmatched += u
    x = logits.double().reshape(batch, h * w)
    t = torch.tensor(targets, dtype=torch.float64)
    wt = torch.tensor(cell_weights, dtype=torch.float64)
    per_cell = torch.log1p(torch.exp(x)) - x * t  # float64: exact for the |x| < 700 used here
    loss = (wt * per_cell).sum(dim=1).div(h * w).mean()
    return loss, positives, unmatched


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def nasty_points(gen: torch.Generator, size: tuple[int, int], n: int) -> torch.Tensor:
    """``n`` uniform points plus border points, a same-cell pair and an exact duplicate."""
    H, W = size
    scale = torch.tensor([W, H], dtype=torch.float32)
    pts = torch.rand(n, 2, generator=gen) * scale
    u = torch.rand(6, generator=gen)
    border = torch.tensor([[0.0, u[0] * H], [W, u[1] * H], [u[2] * W, H], [u[3] * W, 0.0], [W, H]])
    cell = torch.floor(pts[:1] / 4) * 4
    same_cell = torch.cat([cell + 0.5 + u[4], cell + 3.0 - u[5]])
    duplicate = pts[1:2].clone()
    out = torch.cat([pts, border, same_cell, duplicate])
    return out[torch.randperm(len(out), generator=gen)]


def random_valid(gen: torch.Generator, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Pixel masks with a random cutout (unaligned with cells) and a random invalid border."""
    H, W = size
    valid = torch.ones(batch, H, W, dtype=torch.bool)
    for b in range(batch):
        top, left = (int(v) for v in torch.randint(0, min(H, W) // 2, (2,), generator=gen))
        hh, ww = (int(v) for v in torch.randint(3, min(H, W) // 2, (2,), generator=gen))
        valid[b, top : top + hh, left : left + ww] = False
        valid[b, :, W - int(torch.randint(0, 7, (1,), generator=gen)) :] = False
    return valid


def check_against_reference(
    logits: torch.Tensor,
    points: list[torch.Tensor],
    valid: torch.Tensor | None = None,
    weights: list[torch.Tensor] | None = None,
    cfg: P2RConfig = CFG,
) -> P2RResult:
    """Assert value, gradient and counts equal the reference; return the module's result."""
    logits = logits.detach().requires_grad_(True)
    got = p2r_loss(logits, points, valid, weights, cfg)
    want, positives, unmatched = ref_loss(logits, points, valid, weights, cfg)
    (grad_got,) = torch.autograd.grad(got.loss, logits)
    (grad_want,) = torch.autograd.grad(want, logits)
    assert got.loss.dtype == torch.float32 and got.loss.ndim == 0
    torch.testing.assert_close(got.loss.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-4, atol=1e-9)
    assert (got.positives, got.unmatched_points) == (positives, unmatched)
    return got


# --------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("with_weights", [False, True])
def test_matches_reference(
    seed: int, grid: tuple[int, int], with_valid: bool, with_weights: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    size = (4 * h - seed, 4 * w - (seed + 1) % 4)  # H, W not always multiples of the stride
    batch = 3
    logits = 3 * torch.randn(batch, 1, h, w, generator=gen)
    points = [nasty_points(gen, size, int(torch.randint(1, 15, (1,), generator=gen)))]
    points += [torch.zeros(0, 2), nasty_points(gen, size, 25)]
    valid = random_valid(gen, batch, size) if with_valid else None
    weights = None
    if with_weights:
        weights = [torch.rand(len(p), generator=gen) for p in points]
        weights[2][::3] = 0.0  # muted pseudo labels
    got = check_against_reference(logits, points, valid, weights)
    assert got.unmatched_points >= 2  # each image with points has an exact duplicate


@pytest.mark.parametrize("seed", SEEDS)
def test_far_points_leave_cells_unassigned(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    h, w = 40, 56  # 160×224 px
    points = [torch.tensor([[3.0, 5.0], [220.0, 150.0]]) + torch.rand(2, 2, generator=gen)]
    logits = 2 * torch.randn(1, 1, h, w, generator=gen)
    check_against_reference(logits, points, weights=[torch.tensor([0.5, 2.0])])
    # Cells beyond 96 px of both points exist, and they are plain negatives of weight 1.
    x = logits.detach().requires_grad_(True)
    p2r_loss(x, points).loss.backward()
    far = torch.zeros(h, w, dtype=torch.bool)
    far[8:16, 28:32] = True  # centre (~120, ~50): > 96 px from (3, 5) and (220, 150)
    expected = torch.sigmoid(x.detach()) / (h * w)
    torch.testing.assert_close(x.grad[0, 0][far], expected[0, 0][far])


def test_empty_images() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 13, 21, generator=gen)
    empty = [torch.zeros(0, 2), torch.zeros(0, 2)]
    got = check_against_reference(logits, empty)
    assert (got.positives, got.unmatched_points) == (0, 0)
    closed_form = 0.5 * nnf.softplus(logits).mean()
    torch.testing.assert_close(got.loss, closed_form)
    valid = random_valid(gen, 2, (52, 84))
    check_against_reference(logits, empty, valid=valid)


def test_one_point() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 1, 16, 16, generator=gen)
    got = check_against_reference(logits, [torch.tensor([[30.3, 17.9]])])
    assert (got.positives, got.unmatched_points) == (1, 0)


def test_all_points_identical() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 13, 21, generator=gen)
    points = [torch.tensor([[40.5, 20.25]]).repeat(7, 1), torch.tensor([[0.0, 52.0]]).repeat(3, 1)]
    weights = [torch.linspace(0.1, 1.0, 7), torch.tensor([0.0, 1.0, 1.0])]
    got = check_against_reference(logits, points, weights=weights)
    assert (got.positives, got.unmatched_points) == (2, 8)


def test_duplicate_pair_counts_one_unmatched() -> None:
    points = [torch.tensor([[10.0, 10.0], [33.0, 41.0], [10.0, 10.0]])]
    got = check_against_reference(torch.zeros(1, 1, 16, 16), points)
    assert (got.positives, got.unmatched_points) == (2, 1)


def test_cost_ties_go_to_lowest_cell() -> None:
    """A point on the corner of four cells with equal logits: the top-left cell wins."""
    point = [torch.tensor([[8.0, 8.0]])]
    assert check_against_reference(torch.zeros(1, 1, 8, 8), point).positives == 1
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    p2r_loss(logits, point).loss.backward()
    positive = logits.grad[0, 0] < 0  # only the positive cell is pushed up
    assert positive.nonzero().tolist() == [[1, 1]]


def test_isolated_points_with_perfect_logits() -> None:
    """Logits +10 at each isolated point's cell and −10 elsewhere: near-zero loss, N positives."""
    gen = torch.Generator().manual_seed(6)
    h, w = 32, 40
    centres = torch.tensor([[x, y] for y in range(12, 4 * h, 36) for x in range(12, 4 * w, 36)])
    points = centres.float() + 8 * torch.rand(len(centres), 2, generator=gen) - 4
    logits = torch.full((1, 1, h, w), -10.0)
    cols, rows = (points // 4).long().unbind(1)
    logits[0, 0, rows, cols] = 10.0
    got = p2r_loss(logits, [points])
    assert (got.positives, got.unmatched_points) == (len(points), 0)
    assert got.loss.item() < 1e-4
    flipped = p2r_loss(-logits, [points])
    assert flipped.loss.item() > 1.0


# --------------------------------------------------------------------------------------------
# Cell validity
# --------------------------------------------------------------------------------------------


def test_cell_validity_majority_of_in_image_pixels() -> None:
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[0, :2, :] = True  # top half of the first cell row: exactly 1/2 -> valid
    valid[0, 4:7, 4] = True  # 3 of 16 pixels -> invalid
    got = cell_validity(valid, (2, 2), 4)
    assert got.dtype == torch.float32
    assert got.tolist() == [[[1.0, 1.0], [0.0, 0.0]]]


@pytest.mark.parametrize("seed", SEEDS)
def test_cell_validity_matches_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    size = (37 + seed, 50 - seed)
    valid = torch.rand(2, *size, generator=gen) > 0.4
    grid = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    got = cell_validity(valid, grid, 4)
    for b in range(2):
        assert got[b].reshape(-1).tolist() == ref_cell_valid(valid[b], *grid, 4)


def test_cell_validity_pads_and_crops() -> None:
    full = torch.ones(1, 13, 18, dtype=torch.bool)  # not multiples of 4
    assert bool((cell_validity(full, (4, 5), 4) == 1).all())
    assert cell_validity(full, (2, 3), 4).shape == (1, 2, 3)  # model cropped its input
    assert cell_validity(full, (5, 5), 4)[0, 4].tolist() == [0.0] * 5  # beyond the image


# --------------------------------------------------------------------------------------------
# Scaling, devices, errors
# --------------------------------------------------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_points_times_cells_intermediate(monkeypatch: pytest.MonkeyPatch) -> None:
    """2000 points on 256×256 cells: no tensor beyond the ``(h·w)×2`` cell centres, no cdist."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("cdist builds an N×cells matrix")

    monkeypatch.setattr(torch, "cdist", forbidden)
    gen = torch.Generator().manual_seed(7)
    h = w = 256
    points = [torch.rand(2000, 2, generator=gen) * 4 * h]
    logits = torch.randn(1, 1, h, w, generator=gen, requires_grad=True)
    with _LargestTensor() as mode:
        got = p2r_loss(logits, points)
        got.loss.backward()
    assert mode.largest <= 2 * h * w
    assert got.positives + got.unmatched_points == 2000
    assert got.positives > 1900


def test_batch_mean_and_dtype() -> None:
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 1, 16, 16, generator=gen).half()
    points = [nasty_points(gen, (64, 64), 5), torch.zeros(0, 2)]
    both = p2r_loss(logits, points).loss
    one = [p2r_loss(logits[b : b + 1], points[b : b + 1]).loss for b in range(2)]
    assert both.dtype == torch.float32
    torch.testing.assert_close(both, (one[0] + one[1]) / 2)


@cuda
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(9)
    size = (50, 84)
    logits = torch.randn(2, 1, 13, 21, generator=gen)
    points = [nasty_points(gen, size, 20), nasty_points(gen, size, 3)]
    valid = random_valid(gen, 2, size)
    weights = [torch.rand(len(p), generator=gen) for p in points]
    cpu = p2r_loss(logits, points, valid, weights)
    x = logits.cuda().requires_grad_(True)
    dev = p2r_loss(x, [p.cuda() for p in points], valid.cuda(), [q.cuda() for q in weights])
    dev.loss.backward()
    assert dev.loss.device.type == "cuda"
    torch.testing.assert_close(dev.loss.cpu(), cpu.loss)
    assert (dev.positives, dev.unmatched_points) == (cpu.positives, cpu.unmatched_points)


def test_errors() -> None:
    with pytest.raises(ValueError, match="max_radius"):
        P2RConfig(min_radius=10.0, max_radius=5.0)
    with pytest.raises(ValueError, match="stride"):
        P2RConfig(stride=0)
    with pytest.raises(ValueError, match="B×1×h×w"):
        p2r_loss(torch.zeros(1, 2, 4, 4), [torch.zeros(0, 2)])
    with pytest.raises(ValueError, match="point sets"):
        p2r_loss(torch.zeros(2, 1, 4, 4), [torch.zeros(0, 2)])
    with pytest.raises(ValueError, match="point_weights"):
        p2r_loss(torch.zeros(1, 1, 4, 4), [torch.zeros(2, 2)], point_weights=[torch.ones(1)])
    with pytest.raises(ValueError, match="valid"):
        p2r_loss(torch.zeros(1, 1, 4, 4), [torch.zeros(0, 2)], valid=torch.ones(2, 16, 16))
