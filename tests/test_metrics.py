"""Metrics: MAE/RMSE by hand; sparse point matching against a dense Hungarian reference."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from xmask.metrics import (
    MatchCounts,
    candidate_pairs,
    localisation_counts,
    mae,
    match_points,
    rmse,
    threshold_key,
)


def test_mae_rmse_by_hand() -> None:
    pred, true = [10, 20, 30, 0], [12, 20, 26, 1]  # errors -2, 0, 4, -1
    assert mae(pred, true) == pytest.approx((2 + 0 + 4 + 1) / 4)
    assert rmse(pred, true) == pytest.approx(math.sqrt((4 + 0 + 16 + 1) / 4))
    assert mae(np.array([5.0]), np.array([5.0])) == 0.0


def test_mae_rmse_empty_and_mismatched() -> None:
    assert math.isnan(mae([], [])) and math.isnan(rmse([], []))
    with pytest.raises(ValueError, match="one true count per prediction"):
        mae([1, 2], [1])


def _dense_matches(pred: np.ndarray, gt: np.ndarray, sigma: float) -> int:
    """Slow reference: Hungarian on the full distance matrix, far pairs made too expensive."""
    if len(pred) == 0 or len(gt) == 0:
        return 0
    dist = cdist(pred, gt)
    cost = np.where(dist <= sigma, dist, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return int((dist[rows, cols] <= sigma).sum())


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small integer-grid sets (so distances of exactly 4 or 8 px occur), with duplicates."""
    n, m = rng.integers(0, 20, size=2)
    pred = rng.integers(0, 24, size=(n, 2)).astype(np.float32)
    gt = rng.integers(0, 24, size=(m, 2)).astype(np.float32)
    if m > 2 and rng.random() < 0.5:
        gt[: m // 2] = gt[0]  # a stack of duplicate ground-truth points
    if n > 2 and rng.random() < 0.3:
        pred[1] = pred[0]
    return pred, gt


def test_matches_equal_dense_hungarian_optimum() -> None:
    rng = np.random.default_rng(0)
    ties = 0
    for _ in range(400):
        pred, gt = _random_case(rng)
        counts = localisation_counts(pred, gt, (4.0, 8.0))
        for sigma in (4.0, 8.0):
            expected = _dense_matches(pred, gt, sigma)
            c = counts[sigma]
            assert (c.tp, c.fp, c.fn) == (expected, len(pred) - expected, len(gt) - expected)
            i, j = match_points(pred, gt, sigma)
            assert len(i) == expected
            assert len(np.unique(i)) == len(i) and len(np.unique(j)) == len(j)
            assert (np.hypot(*(pred[i] - gt[j]).T) <= sigma).all()
        if len(pred) and len(gt):
            ties += int((cdist(pred, gt) == 4.0).sum())
    assert ties > 0, "the random cases must include pairs exactly at the threshold"


def test_threshold_is_inclusive_and_per_threshold() -> None:
    pred = np.array([[0.0, 0.0], [100.0, 100.0]])
    gt = np.array([[4.0, 0.0], [103.0, 104.0]])  # distances 4 and 5
    counts = localisation_counts(pred, gt, (4.0, 8.0))
    assert counts[4.0] == MatchCounts(tp=1, fp=1, fn=1)
    assert counts[8.0] == MatchCounts(tp=2, fp=0, fn=0)
    assert localisation_counts(pred, gt, (3.999,))[3.999].tp == 0


def test_one_to_one_with_duplicates_and_maximum_matching() -> None:
    # Two predictions on one doubled head: both match; a third head is left for nobody.
    pred = np.array([[10.0, 10.0], [10.0, 10.0]])
    gt = np.array([[10.0, 10.0], [10.0, 10.0], [11.0, 10.0]])
    assert localisation_counts(pred, gt, (4.0,))[4.0] == MatchCounts(tp=2, fp=0, fn=1)
    # Greedy nearest matching would pair p0-g1 (distance 1) and leave p1 without a partner;
    # the maximum matching uses p0-g0 and p1-g1.
    pred = np.array([[0.0, 0.0], [4.0, 0.0]])
    gt = np.array([[-3.5, 0.0], [1.0, 0.0]])
    assert localisation_counts(pred, gt, (4.0,))[4.0].tp == 2


def test_empty_sets() -> None:
    some = np.array([[1.0, 2.0], [30.0, 40.0]])
    none = np.zeros((0, 2), dtype=np.float32)
    assert localisation_counts(none, some)[4.0] == MatchCounts(tp=0, fp=0, fn=2)
    assert localisation_counts(some, none)[8.0] == MatchCounts(tp=0, fp=2, fn=0)
    both = localisation_counts(none, none)[4.0]
    assert both == MatchCounts() and (both.precision, both.recall, both.f1) == (1.0, 1.0, 1.0)
    missed = MatchCounts(tp=0, fp=0, fn=3)
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)
    i, j = match_points(none, some, 8.0)
    assert i.shape == j.shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        localisation_counts(np.array([[np.nan, 1.0]]), some)


def test_match_counts_arithmetic_and_dict() -> None:
    total = MatchCounts(3, 1, 2) + MatchCounts(1, 1, 0)
    assert total == MatchCounts(4, 2, 2)
    d = total.to_dict()
    assert (d["tp"], d["fp"], d["fn"]) == (4, 2, 2)
    assert d["precision"] == pytest.approx(4 / 6) and d["recall"] == pytest.approx(4 / 6)
    assert d["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 2))
    assert (threshold_key(4.0), threshold_key(2.5)) == ("4", "2.5")


def test_candidate_pairs_equal_brute_force() -> None:
    rng = np.random.default_rng(1)
    pred, gt = rng.uniform(0, 50, (60, 2)), rng.uniform(0, 50, (70, 2))
    i, j, d = candidate_pairs(pred, gt, 6.0)
    dist = cdist(pred, gt)
    rows, cols = np.nonzero(dist <= 6.0)
    expected = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    np.testing.assert_allclose(d, dist[i, j], rtol=0, atol=1e-12)


def test_scales_to_dense_crowds() -> None:
    # 20 000 heads 3 px apart: at σ = 8 nearly all points form one connected component.
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 141 * 3, (20_000, 2))
    pred = np.concatenate([gt[:18_000] + rng.uniform(-1, 1, (18_000, 2)), gt[:500]])
    start = time.perf_counter()
    counts = localisation_counts(pred, gt)
    assert time.perf_counter() - start < 10.0
    for c in counts.values():
        assert c.tp >= 18_000 and c.tp + c.fp == len(pred) and c.tp + c.fn == len(gt)
