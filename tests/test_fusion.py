"""Inference rewrites (xmask.models.fusion): same outputs, no BatchNorm left, eval mode only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from xmask.models.backbones import list_backbones
from xmask.models.fusion import fold_batchnorm, prepare_for_inference
from xmask.models.model import ModelConfig, build_model


def _trained_looking(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (fresh ones are identity)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            if module.running_mean is not None and module.running_var is not None:
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("backbone", list_backbones())
def test_prepared_model_gives_the_same_outputs(backbone: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, weights=None, mask_head=True)
    model = _trained_looking(build_model(cfg))
    images = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        expected = model(images)
        prepared = prepare_for_inference(copy.deepcopy(model))
        got = prepared(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    scale = expected.logits.abs().max().item()
    assert torch.allclose(got.logits, expected.logits, atol=1e-4 * max(scale, 1.0))
    assert torch.allclose(got.embedding, expected.embedding, atol=1e-5)


def test_fold_counts_every_batchnorm() -> None:
    model = build_model(ModelConfig(weights=None, mask_head=True)).eval()
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == batchnorms > 0


def test_fold_refuses_training_mode() -> None:
    model = build_model(ModelConfig(weights=None)).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)


def test_batchnorm_without_running_statistics_is_left_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4),
    )
    _trained_looking(net)
    images = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        expected = net(images)
        assert fold_batchnorm(net) == 1
        got = net(images)
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[3], nn.Identity)
    assert torch.allclose(got, expected, atol=1e-5)
