"""The P2R point-to-region loss (Stage 1 of XMask; P2R, GitHub Elin24/P2RLoss).

Per image ``b`` of a batch, with the ``B×1×h×w`` logit map of the stride-``s`` grid:

1. cell ``(i, j)`` has its centre at ``(s·j + s/2, s·i + s/2)`` ``(x, y)`` pixels
   (:func:`xmask.geometry.points.cell_centres`; P2R's ``(i, j)·4 + 1.5`` in integer pixel-index
   coordinates is the same place under xmask's continuous grid, where pixel ``c`` is centred
   at ``c + 0.5``);
2. every cell goes to its nearest head point if that point is strictly closer than
   ``max_radius``; otherwise it is unassigned (a plain negative);
3. a point's radius is the largest distance among its cells, clamped to
   ``[min_radius, max_radius]``;
4. the cost of a cell for its point is ``cost_point·dist/radius − cost_class·logit`` (the logit
   detached: target selection gets no gradient);
5. the cheapest cell of each point's region is its one positive (target 1), ties to the lowest
   cell index; every other cell is a negative;
6. the loss is BCE-with-logits over all cells, weighted ``positive_weight`` (= target + 1) on
   positives and 1 elsewhere, multiplied by the point's weight on its cells and by the cell
   validity, and divided by the number of cells (not by the sum of weights); an image with no
   points has weight ``empty_weight`` on every cell. The batch loss is the mean over images.

A point that owns no cell (an exact duplicate, or another point nearer to each of its cells)
gets no positive. The authors drop such points silently; :func:`p2r_loss` counts them in
:attr:`P2RResult.unmatched_points` and never warns, so the caller can log totals.

Nearest-point search and host sync
    The assignment is a k-d tree query on the CPU (:func:`xmask.geometry.points.nearest_point`), so
    time and memory are ``O(cells·log N)`` and ``O(cells + N)``: no ``N × cells`` distance matrix
    is ever built. The points (all images at once) are copied to the host, which waits for the
    device when they live on a GPU (e.g. teacher pseudo points); the assignment comes back as
    three compact arrays (assigned cell, owning point, distance). The logits never leave their
    device, and everything that touches them (radii, costs, targets, BCE) runs there with
    ``scatter_reduce``; the returned counts are computed on the host and cost no further sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as nnf

from xmask.geometry.points import cell_centres, nearest_point


@dataclass(frozen=True)
class P2RConfig:
    """Constants of the P2R loss (defaults: the authors').

    Attributes:
        stride: pixels per cell side of the logit grid.
        min_radius: lower clamp of a point's radius, pixels.
        max_radius: a cell is assigned only to a point strictly closer than this (pixels); also
            the upper clamp of the radius.
        cost_point: weight of the normalised distance ``dist/radius`` in the cost.
        cost_class: weight of the (detached) logit in the cost.
        empty_weight: BCE weight of every cell of an image with no points.
        positive_weight: BCE weight of a positive cell (target + 1).
    """

    stride: int = 4
    min_radius: float = 8.0
    max_radius: float = 96.0
    cost_point: float = 8.0
    cost_class: float = 1.0
    empty_weight: float = 0.5
    positive_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not 0 < self.min_radius <= self.max_radius < math.inf:
            raise ValueError(
                "need 0 < min_radius <= max_radius < inf, got "
                f"min_radius={self.min_radius}, max_radius={self.max_radius}"
            )


@dataclass
class P2RResult:
    """What :func:`p2r_loss` returns.

    Attributes:
        loss: scalar ``float32`` tensor on the logits' device, differentiable w.r.t. the logits.
        positives: number of positive cells in the batch (= points that own a cell).
        unmatched_points: points in the batch that own no cell and so got no positive.
        positive_cells: ``P int64`` the positive cells, numbered ``b·h·w + i·w + j``.
        positive_points: ``P×2 float32`` ``(x, y)`` the head point of each positive cell.
    """

    loss: torch.Tensor
    positives: int
    unmatched_points: int
    positive_cells: torch.Tensor | None = None
    positive_points: torch.Tensor | None = None


def cell_validity(valid: torch.Tensor, grid: tuple[int, int], stride: int = 4) -> torch.Tensor:
    """Pool a pixel validity mask to the cells of a stride-``stride`` grid.

    A cell is valid when at least half of its ``stride×stride`` block's *in-image* pixels are
    valid. The mask is cropped or padded at the bottom/right to ``(stride·h, stride·w)``: the
    grid is expected to be ``h = ceil(H/stride)``, ``w = ceil(W/stride)`` (it may be smaller when
    the model cropped its input). Padded pixels are outside the image and do not count, so the
    last row/column of cells is judged by the pixels it really covers and an all-True mask makes
    every cell valid; a cell entirely outside the image is invalid.

    Args:
        valid: ``B×H×W`` bool (or 0/1) pixel mask, True = pixel takes part in the loss.
        grid: ``(h, w)`` cells.
        stride: pixels per cell side.

    Returns:
        ``B×h×w float32`` in ``{0, 1}`` on the mask's device.
    """
    if valid.ndim != 3:
        raise ValueError(f"valid must be B×H×W, got shape {tuple(valid.shape)}")
    h, w = grid
    full_h, full_w = h * stride, w * stride
    inside = valid[:, :full_h, :full_w].float()
    pad = (0, full_w - inside.shape[2], 0, full_h - inside.shape[1])
    good = nnf.pad(inside, pad).unsqueeze(1)
    present = nnf.pad(torch.ones_like(inside[:1]), pad).unsqueeze(1)  # same for every image
    good = nnf.avg_pool2d(good, stride).squeeze(1)
    present = nnf.avg_pool2d(present, stride).squeeze(1)
    return ((2 * good >= present) & (present > 0)).float()


@dataclass
class _Assignment:
    """Host-side result of the nearest-point assignment, flattened over the batch.

    Cells are numbered ``b·h·w + i·w + j``; points ``offset_b + k`` (images concatenated).
    """

    cell: np.ndarray  # A int64, assigned cells
    owner: np.ndarray  # A int64, their point
    dist: np.ndarray  # A float32, centre-to-point distance in pixels
    owned: int  # points that own at least one cell


def _assign(
    points: Sequence[torch.Tensor], counts: list[int], grid: tuple[int, int], cfg: P2RConfig
) -> _Assignment:
    """Assign every cell of every image to its nearest point (k-d tree, on the host).

    ``counts[b]`` is the number of points of image ``b``.

    Exact duplicate points are reduced to their first occurrence before the query, so a tie
    between copies always goes to the lowest index and the other copies own no cell. A cell
    exactly equidistant from two *distinct* points goes to whichever the (deterministic) k-d
    tree returns.
    """
    flat = torch.cat([p.detach().reshape(-1, 2) for p in points])
    host = flat.cpu().to(torch.float64).numpy()  # the one device -> host sync
    centres = cell_centres(grid, cfg.stride).numpy().astype(np.float64)
    n_cells = centres.shape[0]
    cells, owners, dists = [], [], []
    start = 0
    for b, n in enumerate(counts):
        if n:
            unique, first = np.unique(host[start : start + n], axis=0, return_index=True)
            index, dist = nearest_point(centres, unique, cfg.max_radius)
            hit = np.flatnonzero(index >= 0)
            cells.append(hit + b * n_cells)
            owners.append(first[index[hit]] + start)
            dists.append(dist[hit])
        start += n
    if not cells:
        empty = np.zeros(0, dtype=np.int64)
        return _Assignment(empty, empty, np.zeros(0, dtype=np.float32), 0)
    owner = np.concatenate(owners)
    return _Assignment(
        cell=np.concatenate(cells),
        owner=owner,
        dist=np.concatenate(dists).astype(np.float32),
        owned=int(np.unique(owner).size),
    )


def p2r_loss(
    logits: torch.Tensor,
    points: Sequence[torch.Tensor],
    valid: torch.Tensor | None = None,
    point_weights: Sequence[torch.Tensor] | None = None,
    cfg: P2RConfig = P2RConfig(),
) -> P2RResult:
    """The P2R loss of a batch (see the module docstring for the definition).

    Args:
        logits: ``B×1×h×w`` head logits of the stride-``cfg.stride`` grid; any float dtype
            (the loss is computed in float32).
        points: ``B`` tensors ``N_b×2``, ``(x, y)`` pixels of the input image, finite; any device.
        valid: optional ``B×H×W`` bool pixel mask (False = cutout or padding), pooled with
            :func:`cell_validity` (``h = ceil(H/stride)`` expected; see there for cropping and
            padding); invalid cells get weight 0.
        point_weights: optional ``B`` tensors ``N_b`` (e.g. pseudo-label confidence, 0 to mute
            a point): the weight of every cell assigned to point ``k`` is multiplied by
            ``point_weights[b][k]``; unassigned cells keep their weight. Not differentiated.
        cfg: the constants.

    Returns:
        :class:`P2RResult`; ``loss`` is the mean over images of ``Σ weight·BCE / (h·w)``.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be B×1×h×w, got shape {tuple(logits.shape)}")
    batch, _, h, w = logits.shape
    counts = [int(p.shape[0]) for p in points]
    if len(counts) != batch:
        raise ValueError(f"got {len(counts)} point sets for a batch of {batch}")
    if point_weights is not None and [int(p.shape[0]) for p in point_weights] != counts:
        raise ValueError("point_weights must have one weight per point of every image")
    if valid is not None and valid.shape[0] != batch:
        raise ValueError(f"valid has {valid.shape[0]} masks for a batch of {batch}")
    device = logits.device
    f32 = torch.float32
    n_cells, n_points = h * w, sum(counts)

    found = _assign(points, counts, (h, w), cfg)
    cell = torch.from_numpy(found.cell).to(device)
    owner = torch.from_numpy(found.owner).to(device)
    dist = torch.from_numpy(found.dist).to(device)

    x = logits.reshape(batch * n_cells).float()
    radius = torch.zeros(n_points, dtype=f32, device=device)
    radius = radius.scatter_reduce_(0, owner, dist, reduce="amax")
    radius = radius.clamp(cfg.min_radius, cfg.max_radius)
    cost = cfg.cost_point * dist / radius[owner] - cfg.cost_class * x.detach()[cell]
    best = torch.full((n_points,), math.inf, dtype=f32, device=device)
    best = best.scatter_reduce_(0, owner, cost, reduce="amin")
    none = batch * n_cells  # larger than any cell index
    candidate = torch.where(cost <= best[owner], cell, none)
    first = torch.full((n_points,), none, dtype=torch.long, device=device)
    first = first.scatter_reduce_(0, owner, candidate, reduce="amin")
    positive = (cell == first[owner]).to(f32)

    target = torch.zeros(batch * n_cells, dtype=f32, device=device).index_copy_(0, cell, positive)
    cell_weight = 1.0 + (cfg.positive_weight - 1.0) * positive
    if point_weights is not None:
        pw = torch.cat([p.detach().reshape(-1) for p in point_weights]).to(device, f32)
        cell_weight = cell_weight * pw[owner]
    base = [1.0 if n else cfg.empty_weight for n in counts]
    weight = torch.tensor(base, dtype=f32, device=device).repeat_interleave(n_cells)
    weight = weight.index_copy_(0, cell, cell_weight)
    if valid is not None:
        weight = weight * cell_validity(valid, (h, w), cfg.stride).to(device).reshape(-1)

    loss = nnf.binary_cross_entropy_with_logits(x, target, weight=weight, reduction="mean")
    chosen = positive > 0
    flat = torch.cat([p.detach().reshape(-1, 2) for p in points]).to(device, f32)
    return P2RResult(
        loss,
        positives=found.owned,
        unmatched_points=n_points - found.owned,
        positive_cells=cell[chosen],
        positive_points=flat[owner[chosen]],
    )
