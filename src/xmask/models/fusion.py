"""Inference-only rewrites of a trained network that change its speed, not its outputs.

:func:`fold_batchnorm` folds each eval-mode BatchNorm into the convolution before it (the
affine map ``γ·(y − μ)/√(σ² + ε) + β`` of ``y = W∗x + b`` is again a convolution, with
``W' = W·γ/√(σ² + ε)`` and ``b' = (b − μ)·γ/√(σ² + ε) + β``), and
:func:`prepare_for_inference` adds channels-last weights. Together they about halve the
EfficientNet-Lite0 forward on a CPU (``benchmarks/predict_speed.py``). The
:class:`~xmask.inference.predictor.Predictor`, evaluation and calibration each run an
:func:`inference_copy`, so the model they are given (perhaps one in training) is untouched.
Outputs change only by float rounding (``tests/test_fusion.py``). A folded network must not
be trained or saved as a checkpoint: its state dict has no BatchNorm entries.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """A convolution and a BatchNorm with running statistics (batch statistics never fold)."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of foldable ``(convolution, BatchNorm)`` children of ``module`` where the
    BatchNorm reads the convolution's output directly: consecutive children of an
    ``nn.Sequential``, or the pairs a module lists in its ``CONV_BN`` class attribute."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        candidates = list(itertools.pairwise(children))
    else:
        candidates = list(getattr(module, "CONV_BN", ()))
    return [(a, b) for a, b in candidates if _foldable(children.get(a), children.get(b))]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorms into the convolutions before them, in place; returns how many.

    Each folded BatchNorm becomes an ``nn.Identity`` and its convolution gets a bias.

    Raises:
        ValueError: ``model`` is in training mode (batch statistics cannot be folded).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            conv.weight, conv.bias = weight, bias
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorms folded and channels-last weights, in place."""
    model.eval()
    fold_batchnorm(model)
    return model.to(memory_format=torch.channels_last)


def inference_copy(model: nn.Module) -> nn.Module:
    """A prepared copy of ``model`` (:func:`prepare_for_inference`); ``model`` is untouched."""
    return prepare_for_inference(copy.deepcopy(model))
