"""Segmentation metrics: IoU against pycocotools, sparse matching against a dense Hungarian."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from xmask.metrics.segmentation import (
    SegmentationCounts,
    instance_ious,
    match_instances,
    segmentation_counts,
)


def _blocky_map(rng: np.random.Generator, size: tuple[int, int], ids: np.ndarray) -> np.ndarray:
    """A random label map of 3×3 blocks drawn from ``ids`` (0 = background), so that
    instances overlap in many ways."""
    h, w = size
    blocks = rng.choice(ids, size=(-(-h // 3), -(-w // 3)))
    return np.kron(blocks, np.ones((3, 3), dtype=np.int64))[:h, :w].astype(np.int32)


def _rles(labels: np.ndarray, ids: np.ndarray) -> list[dict]:
    return [mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8))) for k in ids]


def _dense_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow reference: G×P IoU matrix from one boolean mask per instance."""
    g_ids = np.unique(gt[gt > 0])
    p_ids = np.unique(pred[pred > 0])
    iou = np.zeros((len(g_ids), len(p_ids)))
    for a, g in enumerate(g_ids):
        for b, p in enumerate(p_ids):
            inter = np.sum((gt == g) & (pred == p))
            iou[a, b] = inter / np.sum((gt == g) | (pred == p))
    return g_ids, p_ids, iou


@pytest.mark.parametrize("seed", range(4))
def test_ious_equal_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
    gt = _blocky_map(rng, size, np.array([0, 0, 3, 4, 9, 17]))  # gaps in the ids
    pred = _blocky_map(rng, size, np.array([0, 1, 2, 5, 6, 7, 70_000]))
    ov = instance_ious(gt, pred)
    dense = np.zeros((len(ov.gt_ids), len(ov.pred_ids)))
    dense[ov.gt_index, ov.pred_index] = ov.iou
    coco = mask_utils.iou(_rles(pred, ov.pred_ids), _rles(gt, ov.gt_ids), [0] * len(ov.gt_ids))
    np.testing.assert_allclose(dense, np.asarray(coco).T.reshape(dense.shape), atol=1e-12)
    assert (ov.intersection > 0).all()
    np.testing.assert_array_equal(ov.gt_areas, [np.sum(gt == k) for k in ov.gt_ids])
    np.testing.assert_array_equal(ov.pred_areas, [np.sum(pred == k) for k in ov.pred_ids])


def test_large_ids_take_the_sort_path() -> None:
    gt = np.array([[0, 5, 5], [2_000_000_000, 2_000_000_000, 0]], dtype=np.int64)
    pred = np.array([[7, 7, 7], [0, 3, 3]], dtype=np.int32)
    ov = instance_ious(gt, pred)
    np.testing.assert_array_equal(ov.gt_ids, [5, 2_000_000_000])
    np.testing.assert_array_equal(ov.gt_areas, [2, 2])
    match = match_instances(gt, pred)
    np.testing.assert_array_equal(match.gt_ids, [5, 2_000_000_000])
    np.testing.assert_array_equal(match.pred_ids, [7, 3])
    np.testing.assert_allclose(match.ious, [2 / 3, 1 / 3])


@pytest.mark.parametrize("seed", range(25))
def test_matching_equals_dense_hungarian(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    size = (int(rng.integers(6, 30)), int(rng.integers(6, 30)))
    gt = _blocky_map(rng, size, np.arange(int(rng.integers(1, 9))) * 2)
    pred = _blocky_map(rng, size, np.arange(int(rng.integers(1, 12))))
    g_ids, p_ids, iou = _dense_iou(gt, pred)
    rows, cols = linear_sum_assignment(1.0 - iou) if iou.size else ([], [])
    best = float(iou[rows, cols].sum()) if iou.size else 0.0

    match = match_instances(gt, pred)
    assert match.iou_sum == pytest.approx(best, abs=1e-9)
    assert len(set(match.gt_ids)) == len(match) == len(set(match.pred_ids))  # one to one
    assert (match.ious > 0).all()
    assert (np.diff(match.gt_ids) > 0).all()
    a = np.searchsorted(g_ids, match.gt_ids)
    b = np.searchsorted(p_ids, match.pred_ids)
    np.testing.assert_allclose(match.ious, iou[a, b], atol=1e-12)

    counts = segmentation_counts(gt, pred)
    dense_tp = _dense_threshold_tp(iou)
    assert counts.tp == dense_tp
    assert counts.iou_sum == pytest.approx(best, abs=1e-9)
    assert (counts.gt_instances, counts.pred_instances) == (len(g_ids), len(p_ids))


def _dense_threshold_tp(iou: np.ndarray) -> int:
    """Reference: maximum matching among pairs with IoU ≥ 0.5 by a dense assignment."""
    if iou.size == 0:
        return 0
    ok = iou >= 0.5 - 1e-12
    rows, cols = linear_sum_assignment(-ok.astype(float))
    return int(ok[rows, cols].sum())


def test_perfect_and_shifted_by_hand() -> None:
    gt = np.zeros((4, 8), dtype=np.int32)
    gt[:, 0:4] = 1
    gt[:, 4:8] = 2
    counts = segmentation_counts(gt, gt * 10)
    assert counts.to_dict() == {
        "mean_iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 2,
        "fp": 0,
        "fn": 0,
        "iou_sum": 2.0,
        "gt_instances": 2,
        "pred_instances": 2,
    }
    pred = np.zeros_like(gt)
    pred[:, 1:5] = 1  # IoU 12/20 with gt 1, 4/28 with gt 2
    counts = segmentation_counts(gt, pred)
    assert counts.iou_sum == pytest.approx(12 / 20)
    assert counts.mean_iou == pytest.approx(0.3)
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 1)
    assert counts.precision == 1.0 and counts.recall == 0.5 and counts.f1 == pytest.approx(2 / 3)


def test_exact_half_split_counts_once() -> None:
    """A GT mask that is the exact union of two predicted halves: IoU 0.5 with each, one TP."""
    gt = np.ones((2, 4), dtype=np.int32)
    pred = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.int32)
    counts = segmentation_counts(gt, pred)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0)
    assert counts.iou_sum == pytest.approx(0.5)


def test_threshold_tp_is_not_hungarian_pairs_at_half() -> None:
    """The Hungarian may trade one pair of IoU 0.54 for two of 0.3; TP@0.5 keeps the pair."""
    gt = np.zeros((10, 13), dtype=np.int32)
    pred = np.zeros_like(gt)
    gt[:, 0:10] = 1  # g: 100 px
    pred[:, 3:13] = 1  # p: 100 px, 70 shared with g → IoU 70/130
    pred[:, 0:3] = 2  # p' = rest of g: IoU(g, p') = 0.3
    gt[:, 10:13] = 2  # g' = rest of p: IoU(g', p) = 0.3
    match = match_instances(gt, pred)
    np.testing.assert_allclose(match.ious, [0.3, 0.3])
    counts = segmentation_counts(gt, pred)
    assert counts.tp == 1 and counts.iou_sum == pytest.approx(0.6)


def test_empty_maps() -> None:
    empty = np.zeros((5, 6), dtype=np.int32)
    some = np.zeros_like(empty)
    some[1:3, 1:3] = 4
    assert len(match_instances(empty, some)) == 0
    only_pred = segmentation_counts(empty, some)
    assert (only_pred.tp, only_pred.fp, only_pred.fn) == (0, 1, 0)
    assert only_pred.precision == 0.0 and only_pred.recall == 1.0 and only_pred.mean_iou == 1.0
    only_gt = segmentation_counts(some, empty)
    assert (only_gt.fn, only_gt.mean_iou, only_gt.recall, only_gt.f1) == (1, 0.0, 0.0, 0.0)
    nothing = segmentation_counts(empty, empty)
    assert nothing.f1 == 1.0 and nothing.mean_iou == 1.0
    assert segmentation_counts(np.zeros((0, 3), int), np.zeros((0, 3), int)).gt_instances == 0


def test_counts_sum_over_images() -> None:
    a = SegmentationCounts(tp=2, iou_sum=1.5, gt_instances=3, pred_instances=4)
    b = SegmentationCounts(tp=1, iou_sum=0.5, gt_instances=1, pred_instances=1)
    total = sum([a, b], SegmentationCounts())
    assert total == SegmentationCounts(tp=3, iou_sum=2.0, gt_instances=4, pred_instances=5)
    assert total.mean_iou == 0.5 and total.fp == 2 and total.fn == 1
    assert total.f1 == pytest.approx(6 / 9)


def test_bad_maps_raise() -> None:
    with pytest.raises(ValueError, match="one size"):
        instance_ious(np.zeros((3, 4), int), np.zeros((4, 3), int))
    with pytest.raises(ValueError, match="integer"):
        instance_ious(np.zeros((3, 4)), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="negative"):
        instance_ious(np.zeros((3, 4), int), -np.ones((3, 4), int))


def test_thousands_of_instances_are_fast() -> None:
    """2,000 tiles against a shifted tiling on 1024×768 (one big overlap component): fast, and
    memory of a few pixel-sized arrays (no instances×H×W, no dense G×P)."""
    rows, cols = np.mgrid[0:768, 0:1024]
    gt = ((rows // 16) * 64 + cols // 24 + 1).astype(np.int32)  # 48 × 43 tiles, 2,064
    pred = (((rows + 2) // 16) * 64 + (cols + 3) // 24 + 1).astype(np.int32)
    pred[pred % 7 == 0] = 0  # some missed instances
    tracemalloc.start()
    start = time.perf_counter()
    counts = segmentation_counts(gt, pred)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a few int64 copies of the pixels; a dense G×P float matrix alone would add 34 MB
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert counts.gt_instances == len(np.unique(gt)) > 2000
    overlaps = instance_ious(gt, pred)
    # interior tiles overlap their own by 14/16 · 21/24 (IoU 0.62); border tiles less
    assert counts.tp == int((2 * overlaps.intersection >= overlaps.union).sum()) > 1500
    assert elapsed < 3.0, f"took {elapsed:.2f} s"
