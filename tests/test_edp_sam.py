"""EDP-SAM backend (:mod:`xmask.annotate.edp_sam`) with a tiny randomly initialised SAM.

Random weights give random masks, so these tests check what does not depend on the weights:
the label-map invariants, batching, the low-res sampling against SAM's own upsampling, tiling,
and checkpoint loading. Run with ``pytest -m sam`` (needs ``pip install .[sam]``).
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from xmask.annotate.edp_sam import (
    SamStats,
    _to_input_frame,
    annotate_sam,
    decode,
    make_prompts,
    sam_backend,
    sample_lowres,
)
from xmask.annotate.sam_model import SamConfig, View, build_sam, sam_views, view_of_points
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError, UsageError
from xmask.geometry.circles import head_circles
from xmask.geometry.labels import MaskResult

pytestmark = pytest.mark.sam
F32 = np.float32
MODES = ["box", "mask", "points", "none"]


def tiny_sam(img_size: int = 256, dim: int = 32, seed: int = 0) -> Sam:
    """A SAM of SAM's architecture, shrunk: one encoder block, a depth-1 two-way transformer,
    ``img_size`` 256 (16×16 embedding, 64×64 low-res masks); random weights from ``seed``."""
    torch.manual_seed(seed)
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            mlp_ratio=2,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            window_size=0,
            global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=dim,
        ),
    ).eval()


def config(**kw) -> SamConfig:
    """CPU, few superpixels (the test images are small)."""
    return SamConfig(**{"device": "cpu", "n_segments": 100, **kw})


@pytest.fixture(scope="module")
def predictor():
    return build_sam(config(), builder=tiny_sam)


@pytest.fixture(scope="module")
def crowd():
    return make_crowd(128, 160, 30, seed=3)


def check_invariants(result: MaskResult, points: np.ndarray, size: tuple[int, int]) -> None:
    """Labels ``H×W int32`` in ``{0..N}``; every labelled pixel's centre within its head's NNEC
    radius (float32, as :mod:`xmask.geometry` computes it); every head whose point pixel holds
    no other point owns that pixel."""
    labels, n = result.labels, len(points)
    assert labels.shape == size and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= n
    rows, cols = np.nonzero(labels)
    k = labels[rows, cols] - 1
    dx = cols.astype(F32) + F32(0.5) - points[k, 0].astype(F32)
    dy = rows.astype(F32) + F32(0.5) - points[k, 1].astype(F32)
    assert np.all(dx * dx + dy * dy <= result.radii[k] * result.radii[k])
    h, w = size
    col = np.minimum(np.floor(points[:, 0]).astype(np.int64), w - 1)
    row = np.minimum(np.floor(points[:, 1]).astype(np.int64), h - 1)
    alone = ~result.shared
    assert np.all(labels[row[alone], col[alone]] == np.flatnonzero(alone) + 1)
    assert np.all(result.area[alone] > 0)


@pytest.mark.parametrize("mode", MODES)
def test_every_prompt_mode_gives_valid_masks(predictor, crowd, mode: str) -> None:
    stats = SamStats()
    result = annotate_sam(
        crowd.image, crowd.points, predictor, config(superpixel_prompt=mode), stats
    )
    check_invariants(result, crowd.points, crowd.image.shape[:2])
    assert stats.heads == len(crowd.points) and stats.views == 1
    assert stats.fallback == int(result.fallback.sum())
    assert not predictor.is_image_set  # embedding released after the image


@pytest.mark.parametrize("mode", ["box", "none"])
def test_batching_does_not_change_the_masks(predictor, crowd, mode: str) -> None:
    one = annotate_sam(
        crowd.image, crowd.points, predictor, config(superpixel_prompt=mode, batch_size=1)
    )
    many = annotate_sam(
        crowd.image, crowd.points, predictor, config(superpixel_prompt=mode, batch_size=64)
    )
    np.testing.assert_array_equal(one.labels, many.labels)
    np.testing.assert_array_equal(one.fallback, many.fallback)


def test_duplicates_border_points_and_no_heads(predictor) -> None:
    sample = make_crowd(96, 128, 12, seed=5)
    points = np.concatenate(
        [sample.points, sample.points[:2], np.array([[128.0, 96.0], [0.0, 0.0]], F32)]
    )
    result = annotate_sam(sample.image, points, predictor, config())
    check_invariants(result, points, (96, 128))
    assert result.shared.sum() == 4
    empty = annotate_sam(sample.image, np.zeros((0, 2), F32), predictor, config())
    assert empty.labels.shape == (96, 128) and not empty.labels.any()


def test_bad_input_is_refused(predictor, crowd) -> None:
    with pytest.raises(ValueError, match="uint8"):
        annotate_sam(crowd.image.astype(np.float32), crowd.points, predictor, config())
    with pytest.raises(ValueError, match="outside"):
        annotate_sam(crowd.image, np.array([[500.0, 5.0]], F32), predictor, config())
    with pytest.raises(UsageError):
        SamConfig(model_type="vit_x")
    with pytest.raises(UsageError):
        SamConfig(superpixel_prompt="scribble")  # type: ignore[arg-type]


def test_sampling_matches_sam_upsampling(predictor) -> None:
    """At scale 1 (longest side == img_size) SAM's ``postprocess_masks`` is one bilinear
    upsampling, so sampling the low-res logits at pixel centres must reproduce it exactly."""
    sample = make_crowd(192, 256, 20, seed=7)
    predictor.set_image(sample.image)
    assert predictor.input_size == (192, 256)
    cfg = config()
    from xmask.annotate.edp_sam import view_superpixels

    prompts = make_prompts(sample.points, predictor, cfg, view_superpixels(sample.image, cfg), None)
    low = decode(predictor, prompts, multimask=False)
    full = predictor.model.postprocess_masks(low[:, None], (192, 256), (192, 256))[:, 0]
    circles = head_circles(sample.points, (192, 256))
    px, py = circles.pixels.x, circles.pixels.y
    which = circles.pixels.point
    lh, lw = low.shape[1:]
    u = (px.float() + 0.5) * (lw / 256)
    v = (py.float() + 0.5) * (lh / 256)
    np.testing.assert_allclose(
        sample_lowres(low, which, u, v).numpy(), full[which, py, px].numpy(), atol=1e-5
    )
    predictor.reset_image()


def test_prompt_coordinates_follow_sams_pixel_centre_shift(predictor) -> None:
    """SAM adds 0.5 to prompt coordinates; a continuous position ``x`` of a view resized by
    ``s`` must reach the prompt encoder as ``x·s``, i.e. be sent as ``x·s − 0.5``."""
    predictor.set_image(np.zeros((64, 128, 3), np.uint8))  # longest side 128 → 256: s = 2
    xy = torch.tensor([[10.0, 20.0], [0.0, 64.0]])
    np.testing.assert_allclose(
        _to_input_frame(xy, predictor).numpy(), [[19.5, 39.5], [-0.5, 127.5]]
    )
    predictor.reset_image()


def test_tiles_cover_the_image_and_own_each_head_once() -> None:
    cfg = config(max_side=100, tile_size=96, tile_overlap=32)
    views = sam_views((150, 250), cfg)
    assert len(views) == 2 * 4
    for view in views:
        assert view.x1 - view.x0 <= 96 and view.y1 - view.y0 <= 96
        assert view.x0 >= 0 and view.x1 <= 250 and view.y0 >= 0 and view.y1 <= 150
        for lo, hi, c0, c1, size in (
            (view.x0, view.x1, view.core_x0, view.core_x1, 250),
            (view.y0, view.y1, view.core_y0, view.core_y1, 150),
        ):
            assert (c0 == 0 or c0 - lo >= 16) and (c1 == size or hi - c1 >= 16)
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(0, 1, (500, 2)) * [250, 150], [[250, 150], [0, 0]]])
    owner = view_of_points(points, views)
    for p, k in zip(points, owner, strict=True):
        v = views[k]
        assert v.core_x0 <= p[0] <= v.core_x1 and v.core_y0 <= p[1] <= v.core_y1
    assert sam_views((150, 250), config(large_image="resize")) == [
        View(0, 0, 250, 150, 0.0, 0.0, 250.0, 150.0)
    ]


def test_tiled_image_gives_valid_masks(predictor) -> None:
    sample = make_crowd(150, 250, 60, seed=11)
    stats = SamStats()
    cfg = config(max_side=100, tile_size=96, tile_overlap=32, n_segments=30)
    result = annotate_sam(sample.image, sample.points, predictor, cfg, stats)
    check_invariants(result, sample.points, (150, 250))
    assert stats.views > 1


def test_checkpoint_round_trip(tmp_path: Path, crowd) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam(seed=1).state_dict(), path)
    cfg = config(checkpoint=path)
    loaded = build_sam(cfg, builder=partial(tiny_sam, seed=2))
    reference = build_sam(config(), builder=partial(tiny_sam, seed=1))
    for (name, a), b in zip(
        loaded.model.state_dict().items(), reference.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    backend = sam_backend(cfg, builder=partial(tiny_sam, seed=2))
    np.testing.assert_array_equal(
        backend(crowd.image, crowd.points).labels,
        annotate_sam(crowd.image, crowd.points, reference, cfg).labels,
    )


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(tiny_sam(dim=16).state_dict(), path)
    with pytest.raises(DataError, match=r"other\.pth.*does not match.*shape-mismatched"):
        build_sam(config(checkpoint=path), builder=tiny_sam)
    state = tiny_sam().state_dict()
    state.pop(next(iter(state)))
    torch.save(state, path)
    with pytest.raises(DataError, match="1 missing key"):
        build_sam(config(checkpoint=path), builder=tiny_sam)


class Payload:
    """Anything that is not a tensor: ``weights_only`` loading must refuse to build it."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(DataError, match=r"evil\.pth.*refused"):
        build_sam(config(checkpoint=path), builder=tiny_sam)
    path.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(DataError, match=r"evil\.pth"):
        build_sam(config(checkpoint=path), builder=tiny_sam)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(DataError, match="not a SAM state dict"):
        build_sam(config(checkpoint=path), builder=tiny_sam)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.pth: SAM checkpoint not found"):
        build_sam(config(checkpoint=tmp_path / "nowhere.pth"), builder=tiny_sam)
