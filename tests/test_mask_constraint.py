"""The mask-constraint losses (Eq. 13–15) against a literal per-pixel, per-instance reference."""

from __future__ import annotations

import math

import pytest
import torch

from xmask.losses.mask_constraint import (
    ConstraintConfig,
    ConstraintTarget,
    mask_constraint_loss,
    upsample_logits,
)

F64 = torch.float64


def literal_fhat(cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation written out: pixel ``(y, x)``'s centre ``(x + 0.5, y + 0.5)`` in
    cell units is ``(x + 0.5)/4 − 0.5`` (cell centres at ``4j + 2``), clamped at the edges."""
    h, w = cells.shape
    rows = []
    for y in range(size[0]):
        row = []
        for x in range(size[1]):
            u = min(max((x + 0.5) / 4 - 0.5, 0.0), w - 1)
            v = min(max((y + 0.5) / 4 - 0.5, 0.0), h - 1)
            j0, i0 = math.floor(u), math.floor(v)
            j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
            a, b = u - j0, v - i0
            top = (1 - a) * cells[i0, j0] + a * cells[i0, j1]
            bottom = (1 - a) * cells[i1, j0] + a * cells[i1, j1]
            row.append((1 - b) * top + b * bottom)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def literal_terms(
    cells: torch.Tensor, target: ConstraintTarget, cfg: ConstraintConfig
) -> tuple[torch.Tensor | None, torch.Tensor | None, float | None]:
    """Eq. 13 and Eq. 14 (surrogate and literal) of one image, pixel by pixel (or cell by
    cell, each read at the pixel holding its centre ``(4j + 2, 4i + 2)``)."""
    size = tuple(target.labels.shape)
    if cfg.sample == "pixels":
        f = literal_fhat(cells, size)
        where = [(y, x, y, x) for y in range(size[0]) for x in range(size[1])]
    else:
        f = cells
        where = [
            (i, j, min(4 * i + 2, size[0] - 1), min(4 * j + 2, size[1] - 1))
            for i in range(cells.shape[0])
            for j in range(cells.shape[1])
        ]
    background = []
    regions: dict[int, list[tuple[int, int]]] = {}
    spoiled = set()
    for fy, fx, y, x in where:
        label = int(target.labels[y, x])
        if target.ignore is not None and bool(target.ignore[y, x]):
            spoiled.add(label)
            continue
        if label == 0:
            background.append(f[fy, fx].clamp(min=0))
        else:
            regions.setdefault(label, []).append((fy, fx))
    bg = torch.stack(background).mean() if background else None
    per, per_literal = [], []
    for k, pixels in sorted(regions.items()):
        if k in spoiled or (target.valid is not None and not bool(target.valid[k - 1])):
            continue
        values = torch.stack([f[y, x] for y, x in pixels])
        s_k = values.clamp(min=0).sum()
        n_literal = float((values > 0).sum())
        soft = torch.sigmoid(values / cfg.temperature).sum()
        n_k = n_literal + (soft - soft.detach()) if cfg.count == "straight_through" else soft
        per.append((n_k - 1).abs() + cfg.lam * (s_k - 1).abs())
        per_literal.append(abs(n_literal - 1) + cfg.lam * abs(float(s_k.detach()) - 1))
    if not per:
        return bg, None, None
    return bg, torch.stack(per).mean(), sum(per_literal) / len(per_literal)


def _image(seed: int, size: tuple[int, int] = (22, 27)) -> tuple[torch.Tensor, ConstraintTarget]:
    g = torch.Generator().manual_seed(seed)
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    cells = torch.randn(h, w, generator=g, dtype=F64) * 1.5
    labels = torch.zeros(size, dtype=torch.int32)
    for k in range(1, 6):
        y, x = (
            int(torch.randint(0, size[0] - 5, (1,), generator=g)),
            int(torch.randint(0, size[1] - 5, (1,), generator=g)),
        )
        labels[y : y + 5, x : x + 4 + k % 3] = k
    ignore = torch.zeros(size, dtype=torch.bool)
    ignore[:, -3:] = True
    valid = torch.tensor([True, False, True, True, True, True])
    return cells, ConstraintTarget(labels, valid, ignore)


@pytest.mark.parametrize("count", ["straight_through", "sigmoid"])
@pytest.mark.parametrize("sample", ["cells", "pixels"])
def test_values_and_gradients_match_the_literal_reference(count: str, sample: str) -> None:
    cfg = ConstraintConfig(count=count, sample=sample, lam=0.7, temperature=0.8)  # type: ignore[arg-type]
    images = [_image(seed) for seed in range(3)]
    logits = torch.stack([c for c, _ in images])[:, None].clone().requires_grad_(True)
    result = mask_constraint_loss(logits, [t for _, t in images], cfg)
    ref_logits = logits.detach().clone().requires_grad_(True)
    terms = [literal_terms(ref_logits[b, 0], t, cfg) for b, (_, t) in enumerate(images)]
    ref_bg = torch.stack([bg for bg, _, _ in terms if bg is not None]).mean()
    ref_fg = torch.stack([fg for _, fg, _ in terms if fg is not None]).mean()
    literal = sum(lit for _, _, lit in terms if lit is not None) / 3
    torch.testing.assert_close(result.bg.double(), ref_bg.float().double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.fg.double(), ref_fg.float().double(), rtol=1e-5, atol=1e-6)
    assert float(result.fg_literal) == pytest.approx(literal, rel=1e-5)
    for term, ref in ((result.bg, ref_bg), (result.fg, ref_fg)):
        (got,) = torch.autograd.grad(term, logits, retain_graph=True)
        (want,) = torch.autograd.grad(ref, ref_logits, retain_graph=True)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        assert want.abs().sum() > 0


def test_upsampling_puts_each_cell_at_its_centre() -> None:
    cells = torch.randn(1, 1, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    f = upsample_logits(cells, (19, 23))
    want = literal_fhat(cells[0, 0], (19, 23))
    torch.testing.assert_close(f[0].double(), want, rtol=1e-6, atol=1e-6)
    assert f.shape == (1, 19, 23)


def test_an_image_without_valid_instances_gives_zero_fg_attached_to_the_graph() -> None:
    cells, target = _image(0)
    none_valid = ConstraintTarget(target.labels, torch.zeros(6, dtype=torch.bool), target.ignore)
    logits = cells[None, None].clone().requires_grad_(True)
    result = mask_constraint_loss(logits, [none_valid])
    assert float(result.fg.detach()) == 0.0 and result.instances == 0 and result.fg.requires_grad
    (grad,) = torch.autograd.grad(result.fg, logits)
    assert torch.count_nonzero(grad) == 0
    everything_ignored = ConstraintTarget(target.labels, None, torch.ones_like(target.ignore))
    result = mask_constraint_loss(logits, [everything_ignored])
    assert float(result.bg.detach()) == 0.0 and result.background == 0 and result.bg.requires_grad


def test_a_batch_averages_only_the_images_where_a_term_is_defined() -> None:
    (c0, t0), (c1, t1) = _image(1), _image(2)
    empty = ConstraintTarget(t1.labels, torch.zeros(6, dtype=torch.bool), t1.ignore)
    cfg = ConstraintConfig(sample="pixels")
    both = mask_constraint_loss(torch.stack([c0, c1])[:, None], [t0, empty], cfg)
    alone = mask_constraint_loss(c0[None, None], [t0], cfg)
    torch.testing.assert_close(both.fg, alone.fg)
    assert both.instances == alone.instances > 0
    assert both.background == alone.background + int((t1.labels[~t1.ignore] == 0).sum())


@pytest.mark.parametrize("sample", ["cells", "pixels"])
def test_the_surrogate_raises_a_missed_head_and_lowers_a_split_one(sample: str) -> None:
    labels = torch.zeros(16, 32, dtype=torch.int32)
    labels[:, :16] = 1
    labels[:, 16:] = 2
    cells = torch.full((1, 1, 4, 8), -4.0)
    cells[0, 0, 1, 5] = cells[0, 0, 2, 5] = cells[0, 0, 1, 6] = 3.0  # head 2: three cells
    logits = cells.clone().requires_grad_(True)
    cfg = ConstraintConfig(lam=0.0, sample=sample)  # type: ignore[arg-type]
    result = mask_constraint_loss(logits, [ConstraintTarget(labels)], cfg)
    (grad,) = torch.autograd.grad(result.fg, logits)
    assert grad[0, 0, :, :4].sum() < 0  # head 1 has nothing positive: push its cells up
    assert grad[0, 0, 1:3, 5:7].sum() > 0  # head 2 has too much: push down
    if sample == "cells":
        assert float(result.positives) == 1.5  # (0 + 3) / 2 heads: the counter's own count
    else:
        split = torch.count_nonzero(upsample_logits(cells, (16, 32))[0, :, 16:] > 0).item()
        assert float(result.positives) == pytest.approx(split / 2) and split > 3


def test_a_head_with_exactly_one_positive_cell_gets_no_count_gradient() -> None:
    labels = torch.ones(16, 16, dtype=torch.int32)
    cells = torch.full((1, 1, 4, 4), -2.0)
    cells[0, 0, 1, 2] = 0.3
    logits = cells.clone().requires_grad_(True)
    cfg = ConstraintConfig(lam=0.0, sample="cells")
    result = mask_constraint_loss(logits, [ConstraintTarget(labels)], cfg)
    (grad,) = torch.autograd.grad(result.fg, logits)
    assert float(result.fg_literal) == 0.0 and torch.count_nonzero(grad) == 0
