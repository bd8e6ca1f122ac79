"""The heads of one network output: which cells count (the count rule) and where each head point
lies (the cell centre, moved by the offset head when the model has one). Prediction,
evaluation and the scale rule all decode through :func:`decode_heads`, so they agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmask.inference.count_rule import CountRule
from xmask.models.count_head import COUNT_STRIDE, decode_points
from xmask.types import ModelOutput


@dataclass
class Heads:
    """The heads of one image.

    Attributes:
        points: ``N×2 float32`` ``(x, y)`` pixels of the network input, inside it.
        scores: ``N float32`` head probabilities (sigmoid of the logit).
    """

    points: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])


def inside_points(centres: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cell centres → head points inside the image: a cell cut by the right or bottom border
    gets the centre of its part inside the image (``N×2 float32`` ``(x, y)``)."""
    half = COUNT_STRIDE / 2.0
    limit = np.array([size[1], size[0]], dtype=np.float32)
    return ((centres - half + np.minimum(centres + half, limit)) / 2.0).astype(np.float32)


def decode_heads(out: ModelOutput, size: tuple[int, int], rule: CountRule) -> Heads:
    """The heads of the first image of ``out`` (a network input of ``size = (h, w)``): the
    cells whose logit passes ``rule`` at their centres (:func:`inside_points`), or at
    ``centre + offset`` clipped to the input with an offset head."""
    logits = out.logits
    decoded = decode_points(logits, rule.threshold_for(logits, size[0] * size[1]))[0]
    scores = decoded.scores.cpu().numpy().astype(np.float32)
    if out.offsets is None:
        return Heads(inside_points(decoded.points.cpu().numpy(), size), scores)
    offsets = out.offsets[0].reshape(2, -1)[:, decoded.cells].T
    moved = (decoded.points + offsets.to(decoded.points.dtype)).cpu().numpy()
    limit = np.array([size[1], size[0]], dtype=np.float32)
    return Heads(np.clip(moved, 0.0, limit).astype(np.float32), scores)
