"""The discriminative loss (Eq. 6–10) against a literal, per-point, per-pixel reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from xmask.losses.discriminative import (
    DiscriminativeConfig,
    MaskTarget,
    centres_on_instances,
    discriminative_loss,
)

F64 = torch.float64


def literal_radius(points: list[list[float]], i: int, size: tuple[int, int], r_min: float) -> float:
    """Eq. 6, duplicates measured to the nearest different position, clamped."""
    r_max = 0.5 * min(size)
    others = [math.dist(points[i], q) for q in points if math.dist(points[i], q) > 0]
    return min(max(min(others) if others else r_max, r_min), r_max)


def literal_centre(emb: torch.Tensor, p: list[float]) -> torch.Tensor:
    """Eq. 9 as printed: align_corners=True at ``2p/(W−1, H−1) − 1``, ``p`` in index units."""
    _, h, w = emb.shape
    x, y = p[0] - 0.5, p[1] - 0.5  # corner-origin pixels → index units
    grid = torch.tensor([[[[2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1]]]], dtype=emb.dtype)
    return nnf.grid_sample(emb[None], grid, align_corners=True, padding_mode="border")[0, :, 0, 0]


def literal_loss(
    emb: torch.Tensor, targets: list[MaskTarget], cfg: DiscriminativeConfig
) -> torch.Tensor:
    """Eq. 10 with a loop over points and pixels; both normalisations."""
    per_point, code_total = [], emb.new_zeros(())
    for b, t in enumerate(targets):
        e = emb[b]
        _, h, w = e.shape
        pts = t.points.tolist()
        for i, p in enumerate(pts):
            r = literal_radius(pts, i, (h, w), cfg.r_min)
            c = literal_centre(e, p)
            pull, push = [], []
            for y in range(h):
                for x in range(w):
                    dx = np.float32(x + 0.5) - np.float32(p[0])
                    dy = np.float32(y + 0.5) - np.float32(p[1])
                    if dx * dx + dy * dy > np.float32(r) * np.float32(r):
                        continue
                    if t.ignore is not None and bool(t.ignore[y, x]):
                        continue
                    alpha = 1 if int(t.labels[y, x]) == int(t.instance[i]) else -1
                    d = torch.linalg.vector_norm(e[:, y, x] - c)
                    if alpha == 1:
                        pull.append(torch.relu(d - (cfg.tau - cfg.delta)))
                    else:
                        push.append(torch.relu(cfg.margin - d))
            if pull or push:
                per_point.append(torch.stack(pull + push).mean())
            if pull:
                push_mean = torch.stack(push).mean() if push else emb.new_zeros(())
                code_total = code_total + torch.stack(pull).mean() + push_mean
    if cfg.normalisation == "code":
        return code_total / len(targets)
    return torch.stack(per_point).mean() if per_point else emb.new_zeros(())


def random_case(seed: int) -> tuple[torch.Tensor, list[MaskTarget]]:
    """Two 13×17 images, D = 4, random embeddings, labels from a random Voronoi-ish map."""
    gen = torch.Generator().manual_seed(seed)
    emb = nnf.normalize(torch.randn(2, 4, 13, 17, generator=gen, dtype=F64), dim=1)
    targets = []
    for n in (5, 3):
        points = torch.rand(n, 2, generator=gen, dtype=F64) * torch.tensor([17.0, 13.0], dtype=F64)
        labels = torch.randint(0, n + 1, (13, 17), generator=gen)
        ignore = torch.rand(13, 17, generator=gen) < 0.15
        instance = torch.arange(1, n + 1)
        targets.append(MaskTarget(points.float(), instance, labels, ignore))
    return emb, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalisation", ["paper", "code"])
def test_matches_literal_eq10_values_and_gradients(seed: int, normalisation: str) -> None:
    cfg = DiscriminativeConfig(normalisation=normalisation)  # type: ignore[arg-type]
    emb, targets = random_case(seed)
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    ours = discriminative_loss(a, targets, cfg)
    ref = literal_loss(b, targets, cfg)
    torch.testing.assert_close(ours.loss, ref)
    ours.loss.backward()
    ref.backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad)
    assert ours.loss.item() > 0 and a.grad.abs().sum() > 0


def test_push_margin_and_constants_are_configuration() -> None:
    emb, targets = random_case(3)
    for cfg in (
        DiscriminativeConfig(push_margin=1.0),
        DiscriminativeConfig(tau=0.4, delta=0.2, r_min=5.0),
    ):
        ours = discriminative_loss(emb, targets, cfg)
        torch.testing.assert_close(ours.loss, literal_loss(emb, targets, cfg))
    assert DiscriminativeConfig().margin == pytest.approx(0.7)
    assert DiscriminativeConfig(push_margin=1.0).margin == 1.0


def test_perfect_embedding_has_zero_loss() -> None:
    """Instances at constant, well separated embeddings: every pull and push hinge is 0."""
    labels = torch.zeros(20, 24, dtype=torch.long)
    labels[2:9, 2:10], labels[10:18, 12:22] = 1, 2
    codes = torch.eye(3, dtype=F64)  # background, instance 1, instance 2: distance √2 > 0.7
    emb = codes[labels].permute(2, 0, 1)[None].clone().requires_grad_(True)
    points = torch.tensor([[6.0, 5.5], [17.0, 14.0]])
    targets = [MaskTarget(points, torch.tensor([1, 2]), labels)]
    # no smoothing here: the centres sample the constants exactly
    result = discriminative_loss(emb, targets)
    assert result.loss.item() == 0.0 and result.centres == 2 and result.pixels > 50
    result.loss.backward()
    assert emb.grad is not None and not emb.grad.any()


def test_no_points_and_all_ignored_give_zero_attached_to_the_graph() -> None:
    emb = torch.randn(2, 4, 10, 12, requires_grad=True)
    labels = torch.zeros(10, 12, dtype=torch.long)
    none = MaskTarget(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), labels)
    ignored = MaskTarget(
        torch.tensor([[5.0, 5.0]]), torch.tensor([1]), labels, torch.ones(10, 12, dtype=torch.bool)
    )
    result = discriminative_loss(emb, [none, ignored])
    assert result.loss.item() == 0.0 and result.centres == 0 and result.pixels == 0
    result.loss.backward()
    assert emb.grad is not None


def test_one_point_uses_half_the_short_side_and_duplicates_keep_their_circle() -> None:
    emb, _ = random_case(4)
    labels = torch.randint(0, 3, (13, 17))
    one = [MaskTarget(torch.tensor([[8.2, 6.1]]), torch.tensor([1]), labels)]
    dup_pts = torch.tensor([[8.2, 6.1], [8.2, 6.1], [2.0, 3.0]])
    dup = [MaskTarget(dup_pts, torch.tensor([1, 1, 2]), labels)]
    for targets in (one + one, dup + dup):
        ours = discriminative_loss(emb, targets)
        torch.testing.assert_close(ours.loss, literal_loss(emb, targets, DiscriminativeConfig()))


def test_points_on_the_border() -> None:
    emb, _ = random_case(5)
    labels = torch.randint(0, 5, (13, 17))
    pts = torch.tensor([[0.0, 0.0], [17.0, 13.0], [17.0, 4.0], [8.0, 0.0]])
    targets = [MaskTarget(pts, torch.arange(1, 5), labels)] * 2
    ours = discriminative_loss(emb, targets)
    torch.testing.assert_close(ours.loss, literal_loss(emb, targets, DiscriminativeConfig()))


def test_memory_is_local_windows_not_points_times_pixels() -> None:
    """1,000 centres of radius about 5 px on a 512×512 map: the gathered pixels are Σ|C_i|."""
    gen = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(20, 500, 15.0), torch.arange(20, 500, 15.0), indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=1)[:1000]
    points = points + torch.rand(points.shape, generator=gen)
    labels = torch.zeros(512, 512, dtype=torch.long)
    emb = torch.randn(1, 16, 512, 512, generator=gen)
    result = discriminative_loss(emb, [MaskTarget(points, torch.arange(1, 1001), labels)])
    assert result.centres == 1000
    assert result.pixels < 1000 * math.pi * 16**2  # far below 1000 × 512 × 512


def test_centres_on_instances_keeps_points_on_labels() -> None:
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[1:4, 1:4], labels[5:8, 5:8] = 3, 7
    pts = torch.tensor([[2.5, 2.5], [6.0, 6.0], [0.2, 7.5], [8.0, 8.0]])
    kept, instance = centres_on_instances(pts, labels)
    torch.testing.assert_close(kept, pts[[0, 1, 3]])
    assert instance.tolist() == [3, 7, 7]


def test_bad_inputs() -> None:
    emb = torch.randn(1, 4, 10, 12)
    t = MaskTarget(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(9, 12))
    with pytest.raises(ValueError, match="does not match"):
        discriminative_loss(emb, [t])
    with pytest.raises(ValueError, match="targets for a batch"):
        discriminative_loss(emb, [t, t])
    good = MaskTarget(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(10, 12))
    with pytest.raises(ValueError, match="normalisation"):
        discriminative_loss(emb, [good], DiscriminativeConfig(normalisation="mean"))  # type: ignore[arg-type]
