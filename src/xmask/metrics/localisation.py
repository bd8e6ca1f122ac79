"""Localisation: predicted head points against ground-truth points, matched one to one.

Matching rule
    For a distance threshold ``σ`` the candidate pairs are the (prediction, ground truth) pairs
    at Euclidean distance ``<= σ`` (inclusive, ``sqrt(dx² + dy²)`` in float64). A match is a
    one-to-one choice of candidate pairs, and we take a choice with the **most** pairs: ``TP``
    = matches, ``FP`` = predictions left unmatched, ``FN`` = ground-truth points left
    unmatched. This is the optimum of the usual Hungarian formulation (e.g. NWPU-Crowd's
    localisation benchmark): ``linear_sum_assignment`` on the dense ``N×M`` matrix whose
    entries are 0 for a candidate pair and 1 otherwise (or the distance, with every distance
    above ``σ`` made prohibitively expensive); the number of matches is the same for every
    optimal assignment. Each threshold is matched on its own (a pair may be matched at 8 px
    and not at 4 px).

Scaling
    No dense ``N×M`` matrix is built. A k-d tree lists the candidate pairs within the largest
    threshold (memory proportional to the number of close pairs) and the maximum matching of
    that sparse bipartite graph comes from Hopcroft–Karp
    (:func:`scipy.sparse.csgraph.maximum_bipartite_matching`, ``O(E·sqrt(V))``). Splitting the
    graph into connected components and running a dense Hungarian per component does not
    scale: in dense crowds at ``σ = 8`` nearly all points form one component (10 000 heads
    6 px apart: one component of about 21 000 nodes), and the sparse min-cost solver
    (LAPJVsp) took tens of seconds for 2 000 points. Hopcroft–Karp matches 10 000 heads in
    a few tens of milliseconds. The matched pairs are one maximum matching; which one, among
    several of the same size, is unspecified (the counts are not).

Dataset totals are micro averages: TP, FP and FN are summed over images, then
precision ``TP/(TP+FP)``, recall ``TP/(TP+FN)`` and F1 ``2TP/(2TP+FP+FN)``; a ratio whose
denominator is 0 (nothing predicted, nothing to find) is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

from xmask.metrics.counting import ratio

DEFAULT_THRESHOLDS: tuple[float, ...] = (4.0, 8.0)
"""Distance thresholds ``σ`` in pixels (the authors' protocol, ``docs/equations.md``)."""


@dataclass(frozen=True)
class MatchCounts:
    """True positives, false positives and false negatives at one threshold.

    Attributes:
        tp: matched predictions (= matched ground-truth points).
        fp: predictions without a match.
        fn: ground-truth points without a match.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """``TP / (TP + FP)``; 1 when nothing was predicted."""
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """``TP / (TP + FN)``; 1 when there was nothing to find."""
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """``2TP / (2TP + FP + FN)``, the harmonic mean of precision and recall; 1 when both
        sets are empty."""
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, float | int]:
        """``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def _as_points(points: np.ndarray) -> np.ndarray:
    out = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(out).all():
        raise ValueError("points must be finite")
    return out


def candidate_pairs(
    pred: np.ndarray, gt: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (prediction, ground truth) pairs at distance ``<= max_distance``, via k-d trees.

    Args:
        pred: ``N×2`` ``(x, y)`` predicted points.
        gt: ``M×2`` ``(x, y)`` ground-truth points.
        max_distance: inclusive distance limit in pixels.

    Returns:
        ``(pred index E int64, gt index E int64, distance E float64)``, distances computed as
        ``sqrt(dx² + dy²)`` in float64 (so a pair exactly at the limit is included).
    """
    p, g = _as_points(pred), _as_points(gt)
    empty = np.zeros(0, dtype=np.int64)
    if len(p) == 0 or len(g) == 0:
        return empty, empty, np.zeros(0, dtype=np.float64)
    # A little slack in the tree query, then the exact test on our own distances.
    found = cKDTree(p).sparse_distance_matrix(
        cKDTree(g), max_distance * (1.0 + 1e-9) + 1e-9, output_type="ndarray"
    )
    i = found["i"].astype(np.int64)
    j = found["j"].astype(np.int64)
    diff = p[i] - g[j]
    dist = np.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1])
    keep = dist <= max_distance
    return i[keep], j[keep], dist[keep]


def _max_matching(
    n_pred: int, n_gt: int, i: np.ndarray, j: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A maximum one-to-one matching of the candidate pairs ``(i[e], j[e])`` (Hopcroft–Karp)."""
    if len(i) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    graph = csr_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n_pred, n_gt))
    gt_of = maximum_bipartite_matching(graph, perm_type="column")  # per prediction, or -1
    matched = np.flatnonzero(gt_of >= 0)
    return matched.astype(np.int64), gt_of[matched].astype(np.int64)


def match_points(
    pred: np.ndarray, gt: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to ground-truth points within ``threshold`` pixels.

    The matching has the most pairs possible (module docstring). Sparse: memory and time
    follow the number of candidate pairs, never ``N×M``.

    Args:
        pred: ``N×2`` ``(x, y)`` predicted points (may be empty).
        gt: ``M×2`` ``(x, y)`` ground-truth points (may be empty; duplicates allowed).
        threshold: inclusive distance limit in pixels.

    Returns:
        ``(pred index K int64, gt index K int64)``, the matched pairs, by prediction index.
    """
    p, g = _as_points(pred), _as_points(gt)
    i, j, _ = candidate_pairs(p, g, threshold)
    return _max_matching(len(p), len(g), i, j)


def localisation_counts(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[float, MatchCounts]:
    """TP, FP and FN of one image at every threshold (one k-d tree query for all of them).

    Args:
        pred: ``N×2`` ``(x, y)`` predicted points.
        gt: ``M×2`` ``(x, y)`` ground-truth points.
        thresholds: distance limits ``σ`` in pixels.

    Returns:
        ``{σ: MatchCounts}`` in the order of ``thresholds``.
    """
    p, g = _as_points(pred), _as_points(gt)
    if not thresholds:
        return {}
    i, j, dist = candidate_pairs(p, g, max(thresholds))
    out: dict[float, MatchCounts] = {}
    for sigma in thresholds:
        keep = dist <= sigma
        tp = len(_max_matching(len(p), len(g), i[keep], j[keep])[0])
        out[float(sigma)] = MatchCounts(tp=tp, fp=len(p) - tp, fn=len(g) - tp)
    return out


def threshold_key(sigma: float) -> str:
    """JSON/CSV key of a threshold: ``4.0`` → ``"4"``, ``2.5`` → ``"2.5"``."""
    return f"{sigma:g}"


MISS_CAUSES = ("taken", "off", "missed", "double", "displaced", "spurious")
"""Why points go unmatched at ``σ`` (:func:`miss_causes`)."""


def miss_causes(
    pred: np.ndarray, gt: np.ndarray, sigma: float = 4.0, far: float = 8.0
) -> dict[str, int]:
    """Why points stay unmatched after the one-to-one matching at ``sigma`` (:func:`match_points`).

    A ground-truth head left unmatched is ``taken`` (a prediction lies within ``sigma`` but is
    matched to another head: one point between two heads), ``off`` (the nearest prediction is
    between ``sigma`` and ``far``: placed a cell or more away) or ``missed`` (nothing within
    ``far``). A prediction left unmatched is ``double`` (a head lies within ``sigma`` but is
    matched to another prediction: a second point on one head), ``displaced`` (the nearest head
    is between ``sigma`` and ``far``) or ``spurious`` (nothing within ``far``).

    Args:
        pred: ``N×2`` ``(x, y)`` predicted points.
        gt: ``M×2`` ``(x, y)`` ground-truth points.

    Returns:
        ``{cause: count}`` for every name of :data:`MISS_CAUSES`; ``taken + off + missed`` is
        FN and ``double + displaced + spurious`` is FP at ``sigma``.
    """
    p, g = _as_points(pred), _as_points(gt)
    matched_p, matched_g = match_points(p, g, sigma)
    causes = dict.fromkeys(MISS_CAUSES, 0)
    for points, others, matched, names in (
        (g, p, matched_g, ("taken", "off", "missed")),
        (p, g, matched_p, ("double", "displaced", "spurious")),
    ):
        alone = np.setdiff1d(np.arange(len(points)), matched)
        if len(alone) == 0:
            continue
        if len(others) == 0:
            causes[names[2]] += len(alone)
            continue
        nearest, _ = cKDTree(others).query(points[alone])
        causes[names[0]] += int((nearest <= sigma).sum())
        causes[names[1]] += int(((nearest > sigma) & (nearest <= far)).sum())
        causes[names[2]] += int((nearest > far).sum())
    return causes
