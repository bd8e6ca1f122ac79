"""What inference returns for one image: :class:`Prediction` (count, points, scores, masks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmask.annotate.coco import ImageRecord, label_maps_to_coco
from xmask.data.render import overlay_picture
from xmask.errors import UsageError


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        count: heads the network counts (cells with logit above the count threshold); equal
            to ``len(points)`` except after :meth:`Predictor.segment_points`, whose points are
            the caller's.
        points: ``N×2 float32`` ``(x, y)`` pixels of the segmented heads.
        scores: ``N float32`` head probabilities (sigmoid of the logit; 1 for given points).
        labels: ``H×W int32`` instance label map (0 background, ``k`` = ``points[k − 1]``), or
            None for a model without a mask head.
        size: ``(H, W)`` of the image.
        network_s: seconds in the network (module docstring, Timing).
        post_s: seconds after it: point decoding, smoothing, Eq. 11–12.
        tiles: network tiles run (1: the whole image at once).
        areas: ``N int64`` pixels of each head's mask, or None without labels.
        image: the ``H×W×3 uint8`` RGB input (for :meth:`overlay`).
        roi: ``K×2`` ``(x, y)`` vertices of the region the heads were restricted to
            (:func:`xmask.apps.roi.restrict`), or None.
    """

    count: int
    points: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    size: tuple[int, int]
    network_s: float
    post_s: float
    tiles: int = 1
    areas: np.ndarray | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    roi: np.ndarray | None = None

    def to_coco(self, image_id: int = 1, file_name: str = "image.png") -> dict[str, Any]:
        """COCO instances of this image (:func:`xmask.annotate.coco.label_maps_to_coco`: RLE
        masks, one annotation per head with its point as keypoint, ids from 1).

        Raises:
            UsageError: no label map (a model without a mask head).
        """
        if self.labels is None:
            raise UsageError(f"{file_name}: no instance masks (the model has no mask head)")
        coco = label_maps_to_coco([ImageRecord(file_name, self.points, self.labels)])
        coco["images"][0]["id"] = image_id
        for annotation in coco["annotations"]:
            annotation["image_id"] = image_id
        return coco

    def overlay(self, alpha: float = 0.5, dot_radius: int = 2, caption: bool = True) -> np.ndarray:
        """The image with a translucent colour per instance, a dot on every head point, the
        region's outline (if any) and the count written in the top-left corner.

        Args:
            alpha: opacity of the instance colours.
            dot_radius: radius of the point dots in pixels (0: no dots).
            caption: write ``"N heads"`` (``"N heads in region"``) on the image.

        Returns:
            ``H×W×3 uint8`` RGB.

        Raises:
            UsageError: the prediction holds no image.
        """
        if self.image is None:
            raise UsageError("this prediction holds no image to draw on")
        text = f"{self.count:,} heads" + (" in region" if self.roi is not None else "")
        return overlay_picture(
            self.image, self.labels, self.points, text if caption else None, self.roi,
            alpha, dot_radius,
        )  # fmt: skip
