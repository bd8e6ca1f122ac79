"""Counting errors over a dataset: MAE and RMSE of per-image counts.

The crowd-counting literature (and the paper's tables) calls the root mean squared error
"MSE"; xmask names it ``rmse``: ``sqrt(mean((pred − true)²))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _errors(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"need one true count per prediction, got {p.size} and {t.size}")
    return p - t


def mae(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean absolute error ``mean(|pred − true|)`` of ``N`` per-image counts (NaN when N = 0)."""
    err = _errors(pred, true)
    return float(np.abs(err).mean()) if err.size else math.nan


def rmse(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Root mean squared error ``sqrt(mean((pred − true)²))`` of ``N`` per-image counts — the
    field's "MSE" column (NaN when N = 0)."""
    err = _errors(pred, true)
    return float(np.sqrt((err * err).mean())) if err.size else math.nan


def ratio(num: float, den: float) -> float:
    """``num / den``, or 1.0 when ``den`` is 0 (nothing to find and nothing found is perfect):
    the convention of every precision, recall and F1 in xmask."""
    return num / den if den > 0 else 1.0
