"""Neck: fuse the stride-16 features into the stride-8 ones (authors' ``UpSampleFuse``)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as nnf

from xmask.models.backbones import BackboneFeatures


class Neck(nn.Module):
    """1×1 lateral convs to ``channels``, bilinear upsampling of stride 16 onto stride 8, sum,
    one 3×3 conv. No BatchNorm and no ReLU (as in the authors' code); biases start at 0.

    Args:
        in_channels: ``(C8, C16)`` of the backbone (:attr:`Backbone.channels`).
        channels: output channels.
    """

    def __init__(self, in_channels: tuple[int, int], channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.lateral8 = nn.Conv2d(in_channels[0], channels, 1)
        self.lateral16 = nn.Conv2d(in_channels[1], channels, 1)
        self.fuse = nn.Conv2d(channels, channels, 3, padding=1)
        for conv in (self.lateral8, self.lateral16, self.fuse):
            nn.init.zeros_(conv.bias)

    def forward(self, features: BackboneFeatures) -> Tensor:
        """:class:`BackboneFeatures` → ``B×channels×h8×w8`` (the stride-8 map's size)."""
        x = self.lateral8(features.stride8)
        up = nnf.interpolate(
            self.lateral16(features.stride16),
            size=x.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        return self.fuse(x + up)
