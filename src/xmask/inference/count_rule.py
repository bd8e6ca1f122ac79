"""A count threshold that depends on how crowded an image is.

One logit threshold calibrated over images of very different density (ShanghaiTech A and B
together) is pulled toward the dense ones, whose absolute errors dominate the MAE; the sparse
ones then get a threshold that is too high. A :class:`CountRule` keeps one threshold for
sparse images and one for dense ones: an image's density is the number of cells above the
sparse threshold per 10,000 pixels; above ``split`` the count is taken at ``dense_threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DENSITY_PIXELS = 10_000
"""Density unit: heads per this many pixels."""


@dataclass(frozen=True)
class CountRule:
    """Which logit threshold counts an image.

    Attributes:
        threshold: threshold of sparse images (of every image when ``split`` is None).
        split: heads per 10,000 px, counted at ``threshold``, above which an image is dense;
            None for a single threshold.
        dense_threshold: threshold of dense images (None when ``split`` is None).
    """

    threshold: float
    split: float | None = None
    dense_threshold: float | None = None

    def __post_init__(self) -> None:
        values = [self.threshold, self.split, self.dense_threshold]
        if (self.split is None) != (self.dense_threshold is None):
            raise ValueError("split and dense_threshold are given together or not at all")
        if not all(math.isfinite(v) for v in values if v is not None):
            raise ValueError(f"count rule values must be finite: {values}")

    def pick(self, sparse_count: int, pixels: int) -> float | None:
        """The dense threshold when an image of ``pixels`` with ``sparse_count`` cells above
        ``threshold`` is dense, else None (its count is ``sparse_count``)."""
        if self.split is None or sparse_count * DENSITY_PIXELS / pixels <= self.split:
            return None
        return self.dense_threshold

    def threshold_for(self, logits: Tensor, pixels: int) -> float:
        """The threshold that counts one image.

        Args:
            logits: the image's count logits, any shape (one cell per element).
            pixels: height × width of the image the logits come from.
        """
        if self.split is None:
            return self.threshold
        dense = self.pick(int((logits > self.threshold).sum()), pixels)
        return self.threshold if dense is None else dense

    def describe(self) -> str:
        """``+0.60`` or ``+0.60, +0.75 above 5.49 heads / 10k px``."""
        if self.split is None:
            return f"{self.threshold:+.2f}"
        dense = f"{self.dense_threshold:+.2f} above {self.split:.2f} heads / 10k px"
        return f"{self.threshold:+.2f}, {dense}"


def as_count_rule(value: float | CountRule) -> CountRule:
    """``value`` as a rule: a rule as it is, a number as a single threshold.

    Raises:
        ValueError: a number that is not finite.
    """
    if isinstance(value, CountRule):
        return value
    if not math.isfinite(float(value)):
        raise ValueError(f"count_threshold must be finite, got {value}")
    return CountRule(float(value))


def fit_count_rule(
    counts: Tensor, truth: Tensor, pixels: Tensor, candidates: Tensor, *, min_images: int = 5
) -> tuple[CountRule, float]:
    """The rule with the lowest total absolute count error over calibration images.

    Every candidate pair (sparse threshold, dense threshold) and every split between two
    consecutive image densities is tried; a split must leave at least ``min_images`` images on
    each side. Ties go to the single threshold (no split). Cost: ``K × N × K`` additions.

    Args:
        counts: ``N×K`` cells above each candidate threshold, per image.
        truth: ``N`` true head counts.
        pixels: ``N`` image sizes in pixels (height × width).
        candidates: ``K`` logit thresholds, ascending.
        min_images: fewest images a regime may hold (at least 1).

    Returns:
        The rule and its MAE over the ``N`` images.
    """
    if min_images < 1:
        raise ValueError(f"min_images must be at least 1, got {min_images}")
    n, k = counts.shape
    if truth.shape != (n,) or pixels.shape != (n,) or candidates.shape != (k,):
        raise ValueError(
            f"counts {tuple(counts.shape)} need N true counts, N pixel sizes and K candidates: "
            f"got {tuple(truth.shape)}, {tuple(pixels.shape)}, {tuple(candidates.shape)}"
        )
    err = (counts.double() - truth.double()[:, None]).abs()
    total_single = err.sum(dim=0)
    best_index = int(torch.argmin(total_single))
    best = (float(total_single[best_index]), CountRule(float(candidates[best_index])))
    if n < 2 * min_images:
        return best[1], best[0] / n
    positions = torch.arange(min_images, n - min_images + 1)
    for a in range(k):
        density = counts[:, a].double() * DENSITY_PIXELS / pixels.double()
        order = torch.argsort(density)
        sorted_density = density[order]
        low = torch.cat([torch.zeros(1, dtype=torch.float64), err[order, a].cumsum(0)])
        high = err[order].flip(0).cumsum(0).flip(0)
        high = torch.cat([high, torch.zeros(1, k, dtype=torch.float64)])
        dense_cost, dense_index = high[positions].min(dim=1)
        cost = low[positions] + dense_cost
        distinct = sorted_density[positions - 1] < sorted_density[positions]
        cost = torch.where(distinct, cost, torch.inf)
        i = int(torch.argmin(cost))
        if float(cost[i]) < best[0]:
            s = int(positions[i])
            split = float(sorted_density[s - 1] + sorted_density[s]) / 2
            rule = CountRule(float(candidates[a]), split, float(candidates[dense_index[i]]))
            best = (float(cost[i]), rule)
    return best[1], best[0] / n
