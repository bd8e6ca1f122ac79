"""``miss_causes``: why points stay unmatched at 4 px, against a hand-built scene and a slow
reference."""

from __future__ import annotations

import numpy as np

from xmask.metrics.localisation import localisation_counts, match_points, miss_causes


def test_each_cause_on_a_hand_built_scene() -> None:
    gt = np.array([[10, 10], [13, 10], [50, 50], [100, 100], [200, 200]], np.float32)
    pred = np.array(
        [[11.5, 10], [50, 56], [101, 100], [102, 101], [300, 300]],  # one point, two heads
        np.float32,
    )
    causes = miss_causes(pred, gt)
    assert causes == {
        "taken": 1,  # one of the two heads around (11.5, 10)
        "off": 1,  # (50, 50): its point is 6 px away
        "missed": 1,  # (200, 200)
        "double": 1,  # the second point on (100, 100)
        "displaced": 1,  # (50, 56)
        "spurious": 1,  # (300, 300)
    }


def test_causes_add_up_to_fn_and_fp_and_follow_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        gt = rng.uniform(0, 60, (rng.integers(0, 40), 2)).astype(np.float32)
        pred = rng.uniform(0, 60, (rng.integers(0, 40), 2)).astype(np.float32)
        causes = miss_causes(pred, gt)
        counts = localisation_counts(pred, gt, (4.0,))[4.0]
        assert causes["taken"] + causes["off"] + causes["missed"] == counts.fn
        assert causes["double"] + causes["displaced"] + causes["spurious"] == counts.fp
        mp, mg = match_points(pred, gt, 4.0)
        expected = dict.fromkeys(causes, 0)
        for k in sorted(set(range(len(gt))) - set(mg.tolist())):
            d = min((float(np.hypot(*(q - gt[k]))) for q in pred), default=np.inf)
            expected["taken" if d <= 4 else "off" if d <= 8 else "missed"] += 1
        for k in sorted(set(range(len(pred))) - set(mp.tolist())):
            d = min((float(np.hypot(*(q - pred[k]))) for q in gt), default=np.inf)
            expected["double" if d <= 4 else "displaced" if d <= 8 else "spurious"] += 1
        assert causes == expected
