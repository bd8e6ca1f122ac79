"""Evaluation metrics: counting errors (MAE, RMSE) and point localisation (P/R/F1)."""

from xmask.metrics.counting import mae, rmse
from xmask.metrics.localisation import (
    DEFAULT_THRESHOLDS,
    MatchCounts,
    candidate_pairs,
    localisation_counts,
    match_points,
    threshold_key,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchCounts",
    "candidate_pairs",
    "localisation_counts",
    "mae",
    "match_points",
    "rmse",
    "threshold_key",
]
