"""Evaluation metrics: counting errors (MAE, RMSE), point localisation (P/R/F1) and instance
segmentation (mean IoU, P/R/F1 at IoU 0.5)."""

from xmask.metrics.counting import mae, rmse
from xmask.metrics.localisation import (
    DEFAULT_THRESHOLDS,
    MatchCounts,
    candidate_pairs,
    localisation_counts,
    match_points,
    threshold_key,
)
from xmask.metrics.segmentation import (
    IOU_THRESHOLD,
    InstanceOverlaps,
    Matching,
    SegmentationCounts,
    instance_ious,
    match_instances,
    segmentation_counts,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "IOU_THRESHOLD",
    "InstanceOverlaps",
    "MatchCounts",
    "Matching",
    "SegmentationCounts",
    "candidate_pairs",
    "instance_ious",
    "localisation_counts",
    "mae",
    "match_instances",
    "match_points",
    "rmse",
    "segmentation_counts",
    "threshold_key",
]
