"""Counting head (P2R decoder) and the decoding of its logits into head points."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xmask.geometry.points import cell_centres

COUNT_STRIDE = 4
"""Stride of the logit grid relative to the input image."""


@dataclass
class CountHeadOutput:
    """What :class:`CountHead` returns.

    Attributes:
        logits: ``B×1×2h×2w`` head logits on the stride-4 grid (``h×w``: the stride-8 input).
    """

    logits: Tensor


class CountHead(nn.Module):
    """Two conv3×3+ReLU (no BatchNorm), a conv3×3 to ``2·4`` channels, PixelShuffle(2).

    The two resulting stride-4 channels are background and head scores; the logit is their
    difference (head − background), as in P2R. Biases start at 0.

    Args:
        in_channels: channels of the neck's stride-8 map.
        channels: hidden channels.
    """

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.predict = nn.Conv2d(channels, 2 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.conv1, self.conv2, self.predict):
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> CountHeadOutput:
        """``B×C×h×w`` stride-8 features → :class:`CountHeadOutput` with ``B×1×2h×2w`` logits."""
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        scores = self.shuffle(self.predict(x))
        return CountHeadOutput(logits=scores[:, 1:2] - scores[:, 0:1])


@dataclass
class DecodedPoints:
    """Head points of one image decoded from its logit grid.

    Attributes:
        points: ``N×2 float32`` ``(x, y)`` pixel centres of the selected cells
            (:func:`xmask.geometry.points.cell_centres`).
        scores: ``N float32`` sigmoid probabilities of those cells.
        cells: ``N int64`` row-major cell indices ``i·w + j``.
    """

    points: Tensor
    scores: Tensor
    cells: Tensor

    def __len__(self) -> int:
        return int(self.cells.numel())


def decode_points(
    logits: Tensor,
    threshold: float = 0.0,
    stride: int = COUNT_STRIDE,
    inclusive: bool = False,
) -> list[DecodedPoints]:
    """Cells whose logit passes ``threshold``, as points, per image.

    Counting uses ``logit > threshold``: 0 is the paper's rule, a calibrated value comes from
    :mod:`xmask.inference.calibration` (the count is the number of such cells). Teacher pseudo
    points use ``inclusive=True``, ``logit >= 0`` (the authors' Mean Teacher). For a probability
    threshold ``p`` pass ``threshold=math.log(p / (1 − p))``.

    Args:
        logits: ``B×1×h×w`` (or ``B×h×w``), any device; not differentiated through.
        threshold: logit threshold (compared in the dtype of ``logits``).
        stride: pixels per cell.
        inclusive: select ``logit >= threshold`` (True) or ``logit > threshold`` (False).

    Returns:
        One :class:`DecodedPoints` per image, on the device of ``logits``, cells in row-major
        order.
    """
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"logits must be B×1×h×w, got {tuple(logits.shape)}")
        logits = logits[:, 0]
    if logits.dim() != 3:
        raise ValueError(f"logits must be B×1×h×w or B×h×w, got {tuple(logits.shape)}")
    batch, h, w = logits.shape
    flat = logits.detach().reshape(batch, h * w)
    keep = flat >= threshold if inclusive else flat > threshold
    image, cell = keep.nonzero(as_tuple=True)
    centres = cell_centres((h, w), stride, device=logits.device)
    scores = torch.sigmoid(flat[image, cell].float())
    counts = keep.sum(dim=1).tolist()
    return [
        DecodedPoints(points=centres[c], scores=s, cells=c)
        for c, s in zip(cell.split(counts), scores.split(counts), strict=True)
    ]
