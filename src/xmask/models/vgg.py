"""VGG16-BN to conv5_3 (the paper's backbone): strides 8 and 16, ImageNet normalisation; its
weights come only from a file the user gives (none ship in a wheel)."""

from __future__ import annotations

from torch import Tensor, nn

from xmask.models.backbones import (
    Backbone,
    BackboneFeatures,
    Weights,
    register_backbone,
    weights_file,
)

# Channels of VGG16's convolutions up to conv5_3; "M" is a 2×2 max-pool. Built as one
# nn.Sequential with torchvision's layer indices: [0:33] ends with conv4_3's ReLU (stride 8),
# [33:43] is pool4 + conv5_1..conv5_3 with ReLU (stride 16); pool5 (index 43) is not built.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


_VGG_STRIDE8_END = 33


class VGG16BN(Backbone):
    """VGG16-BN up to conv5_3 after ReLU (paper and authors' code).

    Layer indices and parameter names are those of torchvision's ``vgg16_bn().features``
    (``features.N.*``), so its state dict (``vgg16_bn-6c64b313.pth``) loads directly, and
    random initialisation is torchvision's (Kaiming-normal fan-out convolutions, zero biases,
    unit BatchNorm). Max-pooling uses ``ceil_mode=True`` so odd sizes give ``ceil(H/s)`` maps;
    for multiples of 16 this equals torchvision's pooling.

    Channels: ``(512, 512)``. Input: ImageNet normalisation.
    """

    channels = (512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            out_channels = int(item)
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> BackboneFeatures:
        """``B×3×H×W`` → ``B×512×ceil(H/8)×ceil(W/8)`` and ``B×512×ceil(H/16)×ceil(W/16)``."""
        stride8 = self.features[:_VGG_STRIDE8_END](x)
        return BackboneFeatures(stride8, self.features[_VGG_STRIDE8_END:](stride8))

    def _ignored_key(self, key: str) -> bool:
        return key.startswith("classifier.")


@register_backbone("vgg16_bn")
def vgg16_bn_backbone(weights: Weights = "imagenet") -> VGG16BN:
    """VGG16-BN (paper). ImageNet weights only from a local file: torchvision's ``vgg16_bn``
    state dict (e.g. ``vgg16_bn-6c64b313.pth``); ``weights="imagenet"`` raises."""
    path = weights_file("vgg16_bn", weights, packaged=None)
    model = VGG16BN()
    if path is not None:
        model.load_weights(path)
    return model
