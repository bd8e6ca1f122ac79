"""Joint augmentation: points stay on their pixels, label maps stay consistent, views agree."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from xmask.data.augment import (
    AugmentConfig,
    Augmenter,
    GeometryParams,
    View,
    apply_geometry,
    collate_pairs,
    collate_views,
    nearest_resize,
    sample_geometry,
    strong_view,
    to_view,
)
from xmask.data.photometric import photometric
from xmask.geometry.circles import circle_pixels, label_map
from xmask.geometry.points import pixel_of
from xmask.types import Sample

NO_COLOUR = AugmentConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def _spread_points(n: int, size: tuple[int, int], min_dist: float, seed: int) -> np.ndarray:
    """Up to ``n`` random sub-pixel ``(x, y)`` points ``min_dist`` apart, 3 px off the edges."""
    rng = np.random.default_rng(seed)
    h, w = size
    kept: list[np.ndarray] = []
    for p in rng.uniform((3.0, 3.0), (w - 3.0, h - 3.0), (20 * n, 2)):
        if all(np.hypot(*(p - q)) >= min_dist for q in kept):
            kept.append(p)
        if len(kept) == n:
            break
    return np.array(kept, dtype=np.float32).reshape(-1, 2)


def _dot_sample(
    points: np.ndarray, size: tuple[int, int], half: int, radius: float = 5.0
) -> Sample:
    """White ``(2·half+1)²`` squares centred on each point's pixel, on black; disc labels."""
    h, w = size
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for col, row in pixel_of(points, size):
        image[max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1] = 255
    pixels = circle_pixels(points, np.full(len(points), radius, dtype=np.float32), size)
    labels = label_map(pixels).numpy()
    return Sample(image=image, points=points, name="dots.png", labels=labels)


def _values_at(tensor: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``tensor[..., floor(y), floor(x)]`` for each point (last two dims are rows, columns)."""
    idx = torch.from_numpy(pixel_of(points.numpy(), tuple(tensor.shape[-2:])))
    return tensor[..., idx[:, 1], idx[:, 0]]


def _assert_consistent(view: View, bright: float = 0.35) -> None:
    """Points on bright pixels; labels exactly {0} ∪ {1..N} with label k at point k."""
    n = len(view.points)
    assert view.points.dtype == torch.float32
    assert view.labels is not None
    assert view.labels.dtype == torch.int32
    if n:
        grey = view.image.mean(dim=0)
        assert (_values_at(grey, view.points) > bright).all()
        np.testing.assert_array_equal(
            _values_at(view.labels, view.points).numpy(), np.arange(1, n + 1)
        )
    ids = torch.unique(view.labels).tolist()
    assert set(ids) - {0} == set(range(1, n + 1))


@pytest.fixture(scope="module")
def dots() -> Sample:
    size = (180, 240)
    return _dot_sample(_spread_points(40, size, 14.0, seed=0), size, half=2)


@pytest.mark.parametrize("resize", [(126, 168), (234, 312), (180, 240), (126, 312), (250, 170)])
def test_resize_keeps_points_on_dots(dots: Sample, resize: tuple[int, int]) -> None:
    view = to_view(dots)
    out = apply_geometry(view, GeometryParams(resize, 0, 0, resize[0], resize[1], False))
    assert out.size == resize
    assert len(out.points) == dots.count
    _assert_consistent(out)
    assert out.valid.all()


def test_small_dots_survive_upscaling() -> None:
    size = (60, 80)
    sample = _dot_sample(_spread_points(15, size, 10.0, seed=1), size, half=1, radius=3.0)
    view = to_view(sample)
    for scale in (1.0, 1.3, 2.0):
        rh, rw = round(60 * scale), round(80 * scale)
        out = apply_geometry(view, GeometryParams((rh, rw), 0, 0, rh, rw, False))
        _assert_consistent(out, bright=0.7)


@pytest.mark.parametrize(("top", "left", "flip"), [(0, 0, True), (7, 11, False), (-9, 5, True)])
def test_one_pixel_dots_exact_under_crop_and_flip(top: int, left: int, flip: bool) -> None:
    size = (60, 80)
    sample = _dot_sample(_spread_points(15, size, 10.0, seed=2), size, half=0, radius=3.0)
    out = apply_geometry(to_view(sample), GeometryParams(size, top, left, 50, 64, flip))
    assert len(out.points) > 0
    _assert_consistent(out, bright=0.99)
    assert int((out.image[0] > 0).sum()) >= len(out.points)


def test_dot_check_catches_the_other_flip_convention() -> None:
    """Negative control: torchvision's KeyPoints flip (x → W − 1 − x) misses 1-pixel dots."""
    size = (60, 80)
    sample = _dot_sample(_spread_points(15, size, 10.0, seed=2), size, half=0, radius=3.0)
    out = apply_geometry(to_view(sample), GeometryParams(size, 0, 0, 60, 80, True))
    wrong = out.points.clone()
    wrong[:, 0] = 80 - 1 - torch.from_numpy(sample.points[:, 0])
    assert (_values_at(out.image[0], out.points) == 1).all()
    assert (_values_at(out.image[0], wrong) == 0).all()


def test_label_and_valid_maps_resize_nearest_exact() -> None:
    """Nearest-exact: output pixel centre ``(c + 0.5)/s`` reads the source pixel under it."""
    rows, cols = np.mgrid[0:3, 0:4]
    points = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1).astype(np.float32)
    labels = torch.arange(1, 13, dtype=torch.int32).reshape(3, 4)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 2] = False
    view = View(torch.zeros(3, 3, 4), torch.from_numpy(points), labels, valid)
    up = apply_geometry(view, GeometryParams((6, 8), 0, 0, 6, 8, False))
    torch.testing.assert_close(up.labels, labels.repeat_interleave(2, 0).repeat_interleave(2, 1))
    torch.testing.assert_close(up.valid, valid.repeat_interleave(2, 0).repeat_interleave(2, 1))
    torch.testing.assert_close(_values_at(up.labels, up.points), labels.ravel())
    down = apply_geometry(up, GeometryParams((3, 4), 0, 0, 3, 4, False))
    torch.testing.assert_close(down.labels, labels)
    torch.testing.assert_close(down.valid, valid)


def test_flip(dots: Sample) -> None:
    view = to_view(dots)
    h, w = view.size
    out = apply_geometry(view, GeometryParams((h, w), 0, 0, h, w, True))
    torch.testing.assert_close(out.points[:, 0], w - view.points[:, 0])
    torch.testing.assert_close(out.image, view.image.flip(-1))
    _assert_consistent(out)


@pytest.mark.parametrize(("top", "left"), [(30, 50), (-20, -35), (40, -10), (-5, 100)])
def test_crop_and_pad(dots: Sample, top: int, left: int) -> None:
    view = to_view(dots)
    out = apply_geometry(view, GeometryParams(view.size, top, left, 150, 150, False))
    assert out.size == (150, 150)
    _assert_consistent(out)
    x, y = view.points[:, 0] - left, view.points[:, 1] - top
    inside = (x >= 0) & (x <= 150) & (y >= 0) & (y <= 150)
    torch.testing.assert_close(out.points, torch.stack([x, y], 1)[inside])
    # padding: zero image, label 0, invalid; the image area is valid except dropped heads
    image_area = torch.zeros(150, 150, dtype=torch.bool)
    h, w = view.size
    image_area[max(-top, 0) : h - top, max(-left, 0) : w - left] = True
    assert not out.valid[~image_area].any()
    assert (out.image[:, ~image_area] == 0).all()
    assert (out.labels[~image_area] == 0).all()


def test_dropped_instance_becomes_background_and_invalid() -> None:
    size = (40, 80)
    points = np.array([[10.5, 20.5], [40.3, 20.7], [70.2, 19.1]], dtype=np.float32)
    pixels = circle_pixels(points, np.full(3, 8.0, dtype=np.float32), size)
    labels = label_map(pixels).numpy()
    sample = Sample(np.full((*size, 3), 128, np.uint8), points, "three.png", labels=labels)
    out = apply_geometry(to_view(sample), GeometryParams(size, 0, 15, 40, 40, False))
    # point 0 at x = -4.5 is dropped (its disc reaches columns 15..18 → 0..3 of the crop);
    # point 1 becomes label 1; point 2 at x = 55.2 is dropped (its disc starts at column 62 → 47).
    torch.testing.assert_close(out.points, torch.tensor([[25.3, 20.7]]))
    source = torch.from_numpy(labels[:, 15:55])
    assert (source == 1).any(), "the test needs pixels of the dropped head inside the crop"
    assert (out.labels[source == 1] == 0).all()
    assert not out.valid[source == 1].any()
    assert (out.labels[source == 2] == 1).all()
    assert out.valid[source != 1].all()
    assert set(torch.unique(out.labels).tolist()) == {0, 1}


def test_label_ids_outside_points_raise() -> None:
    labels = np.zeros((8, 8), np.int32)
    labels[2, 2] = 3
    sample = Sample(
        np.zeros((8, 8, 3), np.uint8), np.array([[2.5, 2.5]], np.float32), "x", labels=labels
    )
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        apply_geometry(to_view(sample), GeometryParams((8, 8), 0, 0, 8, 8, False))
    labels[2, 2] = -1
    with pytest.raises(ValueError, match=r"got \[-1, 0\]"):
        apply_geometry(to_view(sample), GeometryParams((8, 8), 0, 0, 8, 8, False))


def test_full_pipeline_over_many_seeds(dots: Sample) -> None:
    augment = Augmenter(NO_COLOUR)
    generator = torch.Generator().manual_seed(123)
    padded = 0
    for _ in range(40):
        weak, strong = augment(dots, generator)
        assert weak.size == strong.size == (256, 256)
        _assert_consistent(weak)
        assert weak.labels is not None and strong.labels is not None
        torch.testing.assert_close(strong.points, weak.points)
        torch.testing.assert_close(strong.labels, weak.labels)
        assert not (strong.valid & ~weak.valid).any()
        same = weak.valid & strong.valid
        torch.testing.assert_close(strong.image[:, same], weak.image[:, same])
        padded += int((~weak.valid).any())
    assert padded > 0


def test_strong_cutout_invalid_in_strong_view_only() -> None:
    cfg = AugmentConfig(scale_range=(1.0, 1.0))  # 300×300 image, 256 crop: no padding
    sample = Sample(np.full((300, 300, 3), 200, np.uint8), np.zeros((0, 2), np.float32), "grey")
    generator = torch.Generator().manual_seed(7)
    for _ in range(20):
        weak, strong = Augmenter(cfg)(sample, generator)
        assert weak.valid.all()
        rows, cols = torch.nonzero(~strong.valid, as_tuple=True)
        # one axis-aligned rectangle of 1/8–1/4 of each side, filled with 0
        box_h = int(rows.max() - rows.min() + 1)
        box_w = int(cols.max() - cols.min() + 1)
        assert 32 <= box_h <= 64 and 32 <= box_w <= 64
        assert rows.numel() == box_h * box_w
        assert (strong.image[:, ~strong.valid] == 0).all()
        assert (strong.image[:, strong.valid] > 0).all()


def test_photometric_changes_pixels_not_geometry(dots: Sample) -> None:
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    weak, strong = Augmenter(cfg)(dots, torch.Generator().manual_seed(3))
    assert strong.image.shape == weak.image.shape
    assert strong.image.min() >= 0 and strong.image.max() <= 1
    assert not torch.allclose(strong.image[:, strong.valid], weak.image[:, strong.valid])
    grey = strong_view(weak, AugmentConfig(grayscale_p=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(grey.image[0], grey.image[1])


def test_reproducible_with_seeded_generator(dots: Sample) -> None:
    augment = Augmenter()
    a = augment(dots, torch.Generator().manual_seed(42))
    b = augment(dots, torch.Generator().manual_seed(42))
    c = augment(dots, torch.Generator().manual_seed(43))
    for first, second in zip(a, b, strict=True):
        torch.testing.assert_close(first.image, second.image)
        torch.testing.assert_close(first.points, second.points)
        torch.testing.assert_close(first.labels, second.labels)
        torch.testing.assert_close(first.valid, second.valid)
    assert not torch.equal(a[1].image, c[1].image)


def test_global_rng_untouched(dots: Sample) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Augmenter()(dots, torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.rand(3), expected)


def test_sample_geometry_ranges() -> None:
    cfg = AugmentConfig(crop_size=(64, 96))
    generator = torch.Generator().manual_seed(0)
    for size in [(50, 60), (300, 400), (80, 90)]:
        for _ in range(50):
            p = sample_geometry(size, cfg, generator)
            assert (p.height, p.width) == (64, 96)
            scale_h, scale_w = p.resize[0] / size[0], p.resize[1] / size[1]
            assert 0.69 <= scale_h <= 1.31 and 0.69 <= scale_w <= 1.31
            for offset, resized, crop in ((p.top, p.resize[0], 64), (p.left, p.resize[1], 96)):
                assert min(0, resized - crop) <= offset <= max(0, resized - crop)


def test_zero_points() -> None:
    sample = Sample(
        np.full((100, 120, 3), 90, np.uint8),
        np.zeros((0, 2), np.float32),
        "empty.png",
        labels=np.zeros((100, 120), np.int32),
    )
    weak, strong = Augmenter()(sample, torch.Generator().manual_seed(0))
    assert weak.points.shape == strong.points.shape == (0, 2)
    assert weak.labels is not None and not weak.labels.any()


def test_without_label_map(dots: Sample) -> None:
    sample = Sample(dots.image, dots.points, "nolabels.png")
    generator = torch.Generator().manual_seed(5)
    weak, strong = Augmenter(NO_COLOUR)(sample, generator)
    assert weak.labels is None and strong.labels is None
    # with padding only (no dropped heads to mark), valid = the image area
    view = to_view(sample)
    out = apply_geometry(view, GeometryParams(view.size, -10, -20, 256, 256, False))
    assert out.labels is None
    assert int(out.valid.sum()) == 180 * (256 - 20)  # rows 10..189, columns 20..255
    batch = collate_views([weak, weak])
    assert batch.labels is None


def test_to_view(dots: Sample) -> None:
    view = to_view(dots)
    assert view.image.shape == (3, 180, 240)
    assert view.image.dtype == torch.float32
    torch.testing.assert_close(view.image, torch.from_numpy(dots.image).permute(2, 0, 1) / 255.0)
    assert view.valid.all()
    assert view.name == "dots.png"


def test_read_only_arrays_do_not_warn(dots: Sample) -> None:
    image, points, labels = dots.image.copy(), dots.points.copy(), dots.labels.copy()
    for array in (image, points, labels):
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = to_view(Sample(image, points, "ro.png", labels=labels))
    torch.testing.assert_close(view.points, torch.from_numpy(dots.points))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_range": (0.0, 1.0)},
        {"scale_range": (1.3, 0.7)},
        {"crop_size": 0},
        {"flip_p": 1.5},
        {"jitter": (0.4, 0.4, 0.4, 0.7)},
        {"blur_sigma": (0.0, 1.0)},
        {"cutout_frac": (0.3, 0.2)},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="invalid AugmentConfig"):
        AugmentConfig(**kwargs)


def test_collate(dots: Sample) -> None:
    augment = Augmenter()
    generator = torch.Generator().manual_seed(0)
    pairs = [augment(dots, generator) for _ in range(3)]
    weak, strong = collate_pairs(pairs)
    assert weak.images.shape == strong.images.shape == (3, 3, 256, 256)
    assert weak.labels is not None and weak.labels.shape == (3, 256, 256)
    assert weak.valid.shape == (3, 256, 256) and weak.valid.dtype == torch.bool
    assert len(weak.points) == 3 and weak.names == ["dots.png"] * 3
    for i, (w, _) in enumerate(pairs):
        torch.testing.assert_close(weak.points[i], w.points)
    moved = weak.to("cpu")
    assert moved.images.device.type == "cpu"
    unlabeled = Augmenter()(Sample(dots.image, dots.points, "u.png"), generator)[0]
    with pytest.raises(ValueError, match="without label maps"):
        collate_views([pairs[0][0], unlabeled])
    with pytest.raises(ValueError, match="empty"):
        collate_views([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(dots: Sample) -> None:
    view = to_view(dots)
    gpu = View(
        view.image.cuda(), view.points.cuda(), view.labels.cuda(), view.valid.cuda(), view.name
    )
    generator = torch.Generator(device="cuda").manual_seed(0)
    weak, strong = Augmenter()(gpu, generator)
    assert weak.image.is_cuda and strong.valid.is_cuda and weak.labels.is_cuda
    cpu = View(weak.image.cpu(), weak.points.cpu(), weak.labels.cpu(), weak.valid.cpu())
    _assert_consistent(cpu, bright=0.2)


SIZES = [((7, 9), (10, 4)), ((16, 16), (11, 23)), ((5, 3), (5, 3))]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_nearest_resize_matches_pixel_centres(src: tuple[int, int], dst: tuple[int, int]) -> None:
    mask = torch.arange(src[0] * src[1], dtype=torch.int32).reshape(1, *src)
    out = nearest_resize(mask, dst)
    for i in range(dst[0]):
        for j in range(dst[1]):
            r = math.floor((i + 0.5) * src[0] / dst[0])
            c = math.floor((j + 0.5) * src[1] / dst[1])
            assert out[0, i, j] == mask[0, r, c]
    expected = nnf.interpolate(mask[None].double(), size=dst, mode="nearest-exact")[0]
    assert torch.equal(out.double(), expected) and out.dtype == torch.int32


def test_log_uniform_scale_is_symmetric_in_log() -> None:
    cfg = AugmentConfig(scale_range=(0.5, 2.0), scale_log_uniform=True, crop_size=32)
    generator = torch.Generator().manual_seed(0)
    scales = np.array(
        [sample_geometry((1000, 1000), cfg, generator).resize[0] / 1000 for _ in range(4000)]
    )
    assert scales.min() >= 0.5 and scales.max() <= 2.0
    # log-uniform: half the draws below 1, a third of them below 1/√2 ... (uniform would put
    # only a third of the draws below 1)
    assert abs((scales < 1.0).mean() - 0.5) < 0.03
    assert abs((scales < 2**-0.5).mean() - 0.25) < 0.03


def test_labeled_crop_without_photometric_is_the_weak_view(dots: Sample) -> None:
    augment = Augmenter(AugmentConfig())
    a = augment.labeled(dots, torch.Generator().manual_seed(9))
    b = augment.weak(dots, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.image, b.image)
    torch.testing.assert_close(a.points, b.points)


def test_labeled_photometric_changes_colour_only(dots: Sample) -> None:
    cfg = AugmentConfig(labeled_photometric_p=1.0, jitter_p=0.0, blur_p=0.0, grayscale_p=1.0)
    augment = Augmenter(cfg)
    grey = augment.labeled(dots, torch.Generator().manual_seed(4))
    plain = augment.weak(dots, torch.Generator().manual_seed(4))
    torch.testing.assert_close(grey.points, plain.points)
    torch.testing.assert_close(grey.labels, plain.labels)
    torch.testing.assert_close(grey.valid, plain.valid)
    torch.testing.assert_close(grey.image[0], grey.image[2])
    _assert_consistent(grey)


def test_jpeg_reencoding_is_lossy_and_bounded() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 64, 64, generator=generator)
    cfg = AugmentConfig(
        jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, jpeg_p=1.0, jpeg_quality=(10, 10)
    )
    out = photometric(noise, cfg, generator)
    assert out.shape == noise.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # quality 10 cannot keep pixel noise: the error is large, while a flat image survives
    assert float((out - noise).abs().mean()) > 0.1
    flat = torch.full((3, 64, 64), 0.5)
    assert float((photometric(flat, cfg, generator) - flat).abs().max()) < 0.02


@pytest.mark.parametrize(
    "kwargs", [{"jpeg_quality": (0, 50)}, {"jpeg_p": 2.0}, {"labeled_photometric_p": -0.1}]
)
def test_bad_new_fields(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="invalid AugmentConfig"):
        AugmentConfig(**kwargs)
