"""The two-regime count rule: its fit against a brute-force search, and its use per image."""

from __future__ import annotations

import itertools

import pytest
import torch

from xmask.inference.count_rule import DENSITY_PIXELS, CountRule, fit_count_rule


def _counts(rule: CountRule, counts: torch.Tensor, pixels: torch.Tensor, cands: list[float]):
    """Each image's count under ``rule``, literally: density at the sparse threshold, then
    the dense threshold's count for dense images."""
    out = []
    for row, px in zip(counts.tolist(), pixels.tolist(), strict=True):
        sparse = row[cands.index(rule.threshold)]
        dense = rule.pick(sparse, px)
        out.append(sparse if dense is None else row[cands.index(dense)])
    return torch.tensor(out, dtype=torch.float64)


def _brute_force(counts, truth, pixels, cands, min_images):
    """Lowest total error over every (sparse, dense) pair and every split value that leaves
    ``min_images`` on each side, plus every single threshold."""
    best = min(
        (float((counts[:, i].double() - truth).abs().sum()), CountRule(c))
        for i, c in enumerate(cands)
    )[0]
    for a, b in itertools.product(range(len(cands)), repeat=2):
        density = sorted(set((counts[:, a].double() * DENSITY_PIXELS / pixels).tolist()))
        for lo, hi in itertools.pairwise(density):
            rule = CountRule(cands[a], (lo + hi) / 2, cands[b])
            dense = counts[:, a].double() * DENSITY_PIXELS / pixels > rule.split
            if min(int(dense.sum()), int((~dense).sum())) < min_images:
                continue
            best = min(best, float((_counts(rule, counts, pixels, cands) - truth).abs().sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_fit_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, cands = 14, [-0.5, 0.0, 0.5, 1.0]
    truth = torch.randint(5, 400, (n,), generator=g).double()
    pixels = torch.randint(50_000, 800_000, (n,), generator=g)
    bias = torch.rand(n, generator=g) * 0.6 + 0.7
    # counts fall as the threshold rises; dense images are biased differently from sparse ones
    counts = torch.stack(
        [(truth * bias * (1.3 - 0.2 * j)).round().long() for j in range(len(cands))], dim=1
    )
    rule, mae = fit_count_rule(counts, truth, pixels, torch.tensor(cands), min_images=3)
    expected = _brute_force(counts, truth, pixels, cands, 3)
    assert mae * n == pytest.approx(expected)
    assert float((_counts(rule, counts, pixels, cands) - truth).abs().mean()) == pytest.approx(mae)


def test_two_regimes_found_when_sparse_and_dense_images_want_different_thresholds() -> None:
    cands = [0.0, 0.5]
    truth = torch.tensor([10.0] * 6 + [1000.0] * 6)
    pixels = torch.full((12,), 100_000)
    # sparse images are right at 0.5, dense ones at 0.0
    counts = torch.tensor([[12, 10]] * 6 + [[1000, 800]] * 6)
    rule, mae = fit_count_rule(counts, truth, pixels, torch.tensor(cands))
    assert (rule.threshold, rule.dense_threshold) == (0.5, 0.0)
    assert 1.0 < rule.split < 80.0
    assert mae == 0.0


def test_single_threshold_kept_when_a_split_does_not_help() -> None:
    truth = torch.tensor([10.0, 20.0, 30.0, 1000.0, 1100.0, 1200.0] * 2)
    counts = torch.stack([truth + 5, truth], dim=1).long()
    rule, mae = fit_count_rule(counts, truth, torch.full((12,), 100_000), torch.tensor([0.0, 0.5]))
    assert rule == CountRule(0.5)
    assert mae == 0.0


def test_too_few_images_for_two_regimes_give_a_single_threshold() -> None:
    truth = torch.tensor([10.0, 1000.0])
    counts = torch.tensor([[12, 10], [1000, 800]])
    rule, _ = fit_count_rule(counts, truth, torch.full((2,), 100_000), torch.tensor([0.0, 0.5]))
    assert rule.split is None


def test_pick_uses_density_at_the_sparse_threshold() -> None:
    rule = CountRule(0.5, split=4.0, dense_threshold=0.2)
    assert rule.pick(40, 100_000) is None
    assert rule.pick(41, 100_000) == 0.2
    assert CountRule(0.5).pick(10**6, 100) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"split": 3.0}, {"dense_threshold": 0.1}, {"split": float("nan"), "dense_threshold": 0.1}],
)
def test_malformed_rules_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CountRule(0.5, **kwargs)


def test_threshold_for_counts_cells_above_the_sparse_threshold() -> None:
    rule = CountRule(0.5, split=2.0, dense_threshold=0.8)
    logits = torch.zeros(10, 10)
    logits[0, :2] = 1.0  # 2 cells above 0.5 in 10,000 px: density 2, sparse
    assert rule.threshold_for(logits, 10_000) == 0.5
    logits[1, :1] = 0.6  # 3 cells: dense
    assert rule.threshold_for(logits, 10_000) == 0.8
    assert CountRule(0.1).threshold_for(logits, 1) == 0.1


def test_describe() -> None:
    assert CountRule(0.6).describe() == "+0.60"
    assert CountRule(0.6, 5.488, 0.75).describe() == "+0.60, +0.75 above 5.49 heads / 10k px"


def test_fit_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="need N true counts"):
        fit_count_rule(torch.zeros(3, 2), torch.zeros(2), torch.ones(3), torch.tensor([0.0, 1.0]))
