"""Typed records that cross module boundaries.

Conventions (see :mod:`xmask.geometry` for the pixel grid):

- images are RGB ``uint8`` arrays of shape ``H×W×3`` at the edges (files, API);
- points are ``N×2 float32`` arrays in ``(x, y)`` pixel coordinates of the image they belong to;
- instance label maps are ``H×W int32`` arrays, 0 = background, ``k`` = the ``k``-th point
  (1-based, same order as ``points``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Sample:
    """One image with its head points, as every reader returns it.

    Attributes:
        image: ``H×W×3 uint8`` RGB.
        points: ``N×2 float32``, ``(x, y)`` pixels; NaN and out-of-image points already dropped.
        name: image file name (e.g. ``"IMG_1.jpg"``), the key used by split lists.
        labels: optional ``H×W int32`` instance label map (0 background, k = point k, 1-based).
        path: the image file, when the sample came from disk.
        greyscale: the file was single-channel (it is returned replicated to RGB).
        dropped_points: points removed from the annotation (NaN or outside the image).
        scale: factor the image and points were resized by (1.0 when not resized).
    """

    image: np.ndarray
    points: np.ndarray
    name: str
    labels: np.ndarray | None = None
    path: Path | None = None
    greyscale: bool = False
    dropped_points: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: image must be H×W×3 uint8, got {self.image.shape} {self.image.dtype}"
            )
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"{self.name}: points must be N×2, got {self.points.shape}")
        if self.labels is not None and self.labels.shape != self.image.shape[:2]:
            raise ValueError(
                f"{self.name}: label map {self.labels.shape} does not match image "
                f"{self.image.shape[:2]}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def count(self) -> int:
        """Number of head points."""
        return int(self.points.shape[0])


@dataclass
class ModelOutput:
    """What the network returns for a batch of images.

    Attributes:
        logits: ``B×1×h×w`` head logits on the stride-4 grid (``h = ceil(H/4)``,
            ``w = ceil(W/4)``); cell ``(i, j)`` is the candidate head point at its centre
            (:func:`xmask.geometry.points.cell_centres`). A cell with logit above the count
            threshold (0, or a calibrated value: :mod:`xmask.inference.calibration`) counts one
            head.
        embedding: ``B×D×h'×w'`` L2-normalised mask embedding, or None without a mask head.
        offsets: ``B×2×h×w`` ``(dx, dy)`` pixels from each cell centre to its head point, or
            None without an offset head (points are then the cell centres).
    """

    logits: torch.Tensor
    embedding: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
