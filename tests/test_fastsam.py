"""FastSAM baselines: prompt matching on hand-made candidates (no network), and the ultralytics
path with a randomly initialised FastSAM-s (skipped where ultralytics is not installed)."""

from __future__ import annotations

import fractions
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from xmask.annotate.fastsam import (
    annotate_fastsam,
    fastsam_backend,
    fastsam_labels,
    smallest_covering,
)
from xmask.annotate.fastsam_model import (
    FastSamConfig,
    _architecture,
    _import_ultralytics,
    _load_network,
    candidate_masks,
    load_fastsam,
)
from xmask.data.synthetic import make_crowd
from xmask.errors import DataError, UsageError
from xmask.geometry.labels import MaskResult

F32 = np.float32
CFG = FastSamConfig(chunk=2)  # chunks smaller than K exercise the chunked reductions


def box(size: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``H×W bool`` with columns ``x0..x1−1`` and rows ``y0..y1−1`` set."""
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def stack(*masks: np.ndarray) -> torch.Tensor:
    """``K×H×W uint8`` candidates, as ultralytics returns them."""
    return torch.from_numpy(np.stack(masks).astype(np.uint8))


def brute_radii(points: np.ndarray, size: tuple[int, int], r_min: float = 3.0) -> np.ndarray:
    """NNEC radii from all pairwise distances (points at distinct positions)."""
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1).astype(np.float64))
    np.fill_diagonal(d, np.inf)
    r = d.min(axis=1) if len(points) > 1 else np.full(len(points), np.inf)
    return np.clip(np.minimum(r, 0.5 * min(size)), r_min, 0.5 * min(size))


def check_labels(result: MaskResult, points: np.ndarray, size: tuple[int, int]) -> None:
    """Shape, dtype, values in ``{0..N}``, areas consistent with the map."""
    n = len(points)
    assert result.labels.shape == size and result.labels.dtype == np.int32
    assert result.labels.min() >= 0 and result.labels.max() <= n
    assert np.array_equal(result.area, np.bincount(result.labels.ravel(), minlength=n + 1)[1:])
    for field in (result.fallback, result.forced, result.shared):
        assert field.shape == (n,) and field.dtype == bool


def check_inside_circles(result: MaskResult, points: np.ndarray, size: tuple[int, int]) -> None:
    """No labelled pixel lies outside its own head's NNEC circle (brute-force radii)."""
    np.testing.assert_allclose(result.radii, brute_radii(points, size), rtol=1e-6)
    rows, cols = np.nonzero(result.labels)
    head = result.labels[rows, cols] - 1
    dx = cols + 0.5 - points[head, 0].astype(np.float64)
    dy = rows + 0.5 - points[head, 1].astype(np.float64)
    assert (dx * dx + dy * dy <= result.radii[head].astype(np.float64) ** 2 + 1e-3).all()


# --------------------------------------------------------------------------------------------
# Candidate choice (pure function)
# --------------------------------------------------------------------------------------------


def test_smallest_covering_picks_the_smallest_of_overlapping_candidates() -> None:
    size = (40, 50)
    big = box(size, 0, 0, 50, 40)  # covers every point, area 2000
    small = box(size, 5, 5, 12, 12)  # covers point 0 only, area 49
    medium = box(size, 20, 5, 35, 25)  # covers point 1, area 300
    other = box(size, 30, 30, 33, 33)  # covers no point
    points = np.array([[8.2, 7.9], [25.5, 10.0], [45.0, 35.0]], dtype=F32)
    choice, area = smallest_covering(stack(big, small, medium, other), points, chunk=2)
    assert choice.tolist() == [1, 2, 0]
    assert area.tolist() == [2000, 49, 300, 9]


def test_smallest_covering_uncovered_points_ties_and_border() -> None:
    size = (20, 30)
    a = box(size, 25, 15, 30, 20)  # bottom-right corner, area 25
    b = box(size, 25, 15, 30, 20)  # same area: the lower index wins
    c = box(size, 0, 0, 5, 5)
    points = np.array([[30.0, 20.0], [29.99, 15.0], [10.0, 10.0], [0.0, 0.0]], dtype=F32)
    choice, _ = smallest_covering(stack(a, b, c), points)
    # (30, 20) lies on the right/bottom border: pixel (29, 19); (10, 10) is covered by none
    assert choice.tolist() == [0, 0, -1, 2]


def test_smallest_covering_without_candidates_or_points() -> None:
    empty = torch.zeros((0, 8, 8), dtype=torch.uint8)
    choice, area = smallest_covering(empty, np.array([[1.0, 1.0]], dtype=F32))
    assert choice.tolist() == [-1] and area.shape == (0,)
    choice, area = smallest_covering(stack(box((8, 8), 0, 0, 4, 4)), np.zeros((0, 2), F32))
    assert choice.shape == (0,) and area.tolist() == [0]


# --------------------------------------------------------------------------------------------
# FastSAM + NNEC
# --------------------------------------------------------------------------------------------


def test_nnec_clips_to_circles_and_falls_back_to_the_circle() -> None:
    size = (48, 64)
    points = np.array([[10.5, 10.5], [30.2, 12.7], [50.0, 30.0], [20.0, 40.0]], dtype=F32)
    whole = np.ones(size, dtype=bool)  # covers everything: clipping alone shapes the masks
    blob = box(size, 26, 8, 36, 18)  # point 1's head
    masks = stack(whole, blob, box(size, 0, 0, 64, 1))  # the thin strip covers no point
    result = fastsam_labels(masks, points, CFG, nnec=True)
    check_labels(result, points, size)
    check_inside_circles(result, points, size)
    assert result.fallback.tolist() == [False, False, False, False]
    assert result.empty == 0
    # head 1 chose the blob: its mask lies inside the blob
    assert blob[result.labels == 2].all()
    # the same points with candidates only for head 0: the others fall back to their circles
    result = fastsam_labels(stack(box(size, 5, 5, 15, 15)), points, CFG, nnec=True)
    check_inside_circles(result, points, size)
    assert result.fallback.tolist() == [False, True, True, True]
    assert (result.area[1:] > 0).all()


def test_nnec_fallback_of_a_lone_point_is_its_full_circle() -> None:
    size = (30, 40)
    points = np.array([[20.0, 15.0]], dtype=F32)  # alone: r = 0.5·min(H, W) = 15
    masks = stack(box(size, 0, 0, 5, 5))  # does not cover the point
    result = fastsam_labels(masks, points, CFG, nnec=True)
    rows, cols = np.mgrid[: size[0], : size[1]]
    circle = (cols + 0.5 - 20.0) ** 2 + (rows + 0.5 - 15.0) ** 2 <= 15.0**2
    assert result.fallback.tolist() == [True]
    assert np.array_equal(result.labels == 1, circle)
    # a smaller fallback disc
    half = fastsam_labels(masks, points, FastSamConfig(fallback_radius=0.5), nnec=True)
    disc = (cols + 0.5 - 20.0) ** 2 + (rows + 0.5 - 15.0) ** 2 <= 7.5**2
    assert np.array_equal(half.labels == 1, disc)


def test_nnec_points_on_the_border() -> None:
    size = (24, 32)
    points = np.array([[32.0, 24.0], [0.0, 0.0], [32.0, 0.0]], dtype=F32)
    masks = stack(box(size, 28, 20, 32, 24), box(size, 0, 0, 3, 3))
    result = fastsam_labels(masks, points, CFG, nnec=True)
    check_labels(result, points, size)
    check_inside_circles(result, points, size)
    assert result.fallback.tolist() == [False, False, True]
    assert result.labels[23, 31] == 1 and result.labels[0, 0] == 2 and result.labels[0, 31] == 3


# --------------------------------------------------------------------------------------------
# FastSAM alone
# --------------------------------------------------------------------------------------------


def test_plain_smallest_area_wins_and_masks_leave_the_circles() -> None:
    size = (40, 60)
    points = np.array([[10.0, 10.0], [16.0, 12.0], [50.0, 35.0]], dtype=F32)
    big = box(size, 0, 0, 40, 40)  # chosen by point 1 (no smaller candidate covers it)
    small = box(size, 6, 6, 14, 14)  # chosen by point 0, inside big
    masks = stack(big, small)
    result = fastsam_labels(masks, points, CFG, nnec=False)
    check_labels(result, points, size)
    assert np.array_equal(result.labels == 1, small)
    assert np.array_equal(result.labels == 2, big & ~small)
    # far beyond point 1's NNEC circle (radius ~6.3): FastSAM alone does not clip
    assert result.labels[39, 39] == 2
    # point 2: no candidate, no mask
    assert result.fallback.tolist() == [False, False, True]
    assert result.area[2] == 0 and result.empty == 1
    assert not result.forced.any()


def test_plain_shared_candidate_is_split_by_the_nearest_point() -> None:
    size = (30, 40)
    points = np.array([[8.3, 10.1], [30.7, 12.4], [20.2, 25.9]], dtype=F32)
    region = box(size, 2, 2, 38, 28)  # the only candidate: all three points choose it
    result = fastsam_labels(stack(region), points, CFG, nnec=False)
    check_labels(result, points, size)
    rows, cols = np.mgrid[: size[0], : size[1]]
    d2 = (cols[None] + 0.5 - points[:, 0, None, None]) ** 2
    d2 = d2 + (rows[None] + 0.5 - points[:, 1, None, None]) ** 2
    expected = np.where(region, d2.argmin(axis=0) + 1, 0)
    assert np.array_equal(result.labels, expected)
    # an exact copy of point 1 (appended as point 3) gets nothing, as in the circle backends
    copied = np.concatenate([points, points[1:2]])
    result = fastsam_labels(stack(region), copied, CFG, nnec=False)
    assert np.array_equal(result.labels, expected)
    assert result.area[3] == 0 and result.shared.tolist() == [False, True, False, True]


def test_plain_point_pixel_is_forced_to_its_head() -> None:
    size = (20, 20)
    # both choose the same candidate; the centre of point 0's pixel (10.5, 10.5) is nearer to
    # point 1 (distance 0.5) than to point 0 (0.71), so the split alone would give it away
    points = np.array([[10.0, 10.0], [11.0, 10.5]], dtype=F32)
    result = fastsam_labels(stack(box(size, 5, 5, 15, 15)), points, CFG, nnec=False)
    assert result.labels[10, 10] == 1 and result.labels[10, 11] == 2
    assert result.forced.tolist() == [True, False]


def test_plain_and_nnec_without_candidates_or_points() -> None:
    size = (16, 16)
    none = torch.zeros((0, *size), dtype=torch.uint8)
    points = np.array([[4.0, 4.0], [12.0, 12.0]], dtype=F32)
    plain = fastsam_labels(none, points, CFG, nnec=False)
    assert not plain.labels.any() and plain.fallback.all() and plain.empty == 2
    nnec = fastsam_labels(none, points, CFG, nnec=True)
    assert nnec.fallback.all() and nnec.empty == 0
    for nnec_flag in (False, True):
        result = fastsam_labels(none, np.zeros((0, 2), F32), CFG, nnec=nnec_flag)
        assert result.labels.shape == size and not result.labels.any()


def test_bool_and_uint8_candidates_agree_other_dtypes_are_rejected() -> None:
    size = (24, 24)
    points = np.array([[5.0, 5.0], [15.5, 16.0]], dtype=F32)
    masks = stack(box(size, 0, 0, 12, 12), box(size, 10, 10, 24, 24), np.ones(size, bool))
    for nnec in (False, True):
        as_uint8 = fastsam_labels(masks, points, CFG, nnec)
        as_bool = fastsam_labels(masks.bool(), points, CFG, nnec)
        assert np.array_equal(as_uint8.labels, as_bool.labels)
    with pytest.raises(ValueError, match="uint8"):
        fastsam_labels(masks.long(), points, CFG, nnec=True)


def test_points_outside_the_image_are_rejected() -> None:
    masks = stack(np.ones((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="outside"):
        fastsam_labels(masks, np.array([[9.0, 1.0]], dtype=F32), CFG, nnec=True)


# --------------------------------------------------------------------------------------------
# ultralytics: randomly initialised FastSAM-s, offline
# --------------------------------------------------------------------------------------------

SMALL = FastSamConfig(arch="s", imgsz=320, device="cpu")


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("FastSAM tried to reach the network")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """ultralytics installed (imported the way xmask does it, which keeps the process's
    ``OMP_NUM_THREADS``), and every socket connection or DNS look-up fails the test."""
    try:
        _import_ultralytics()
    except UsageError:
        pytest.skip("ultralytics is not installed (pip install 'xmask[fastsam]')")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "getaddrinfo", _no_network)
        patch.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="module")
def model(offline: None) -> object:
    return load_fastsam(SMALL)


def test_module_import_keeps_ultralytics_offline() -> None:
    assert os.environ.get("YOLO_OFFLINE")


def test_random_fastsam_on_a_synthetic_crowd(model: object) -> None:
    sample = make_crowd(256, 320, 40, seed=3)
    size = sample.image.shape[:2]
    for nnec in (False, True):
        result = annotate_fastsam(sample.image, sample.points, model, SMALL, nnec)
        check_labels(result, sample.points, size)
        if nnec:
            check_inside_circles(result, sample.points, size)
            assert result.empty == 0


def test_network_resolution_masks_are_resized(model: object) -> None:
    sample = make_crowd(96, 160, 8, seed=4)
    cfg = FastSamConfig(arch="s", imgsz=320, device="cpu", retina_masks=False, conf=0.0)
    masks = candidate_masks(model, sample.image, cfg)  # network input 192×320
    assert len(masks) > 0 and masks.shape[1:] == (96, 160) and masks.dtype == torch.uint8
    check_labels(fastsam_labels(masks, sample.points, cfg, nnec=True), sample.points, (96, 160))


def test_backend_factory(offline: None) -> None:
    run = fastsam_backend(SMALL, nnec=False)
    sample = make_crowd(64, 96, 5, seed=5)
    check_labels(run(sample.image, sample.points), sample.points, (64, 96))


def test_weights_files(offline: None, tmp_path: Path) -> None:
    network = _architecture("s")
    state = tmp_path / "state.pt"
    torch.save(network.state_dict(), state)
    loaded = _load_network(FastSamConfig(weights=state, arch="s"))
    first = next(iter(network.state_dict()))
    assert torch.equal(loaded.state_dict()[first], network.state_dict()[first])
    partial = tmp_path / "partial.pt"  # a key missing, as in a file of another architecture
    torch.save(dict(list(network.state_dict().items())[1:]), partial)
    with pytest.raises(DataError, match="does not fit FastSAM-s"):
        _load_network(FastSamConfig(weights=partial, arch="s"))
    with pytest.raises(DataError, match="not found"):
        _load_network(FastSamConfig(weights=tmp_path / "FastSAM-x.pt"))
    pickled = tmp_path / "pickled.pt"  # the ultralytics format: the whole network pickled
    torch.save({"model": network, "train_args": {}}, pickled)
    assert isinstance(_load_network(FastSamConfig(weights=pickled)), type(network))
    foreign = tmp_path / "foreign.pt"  # a global no safe loader allows
    torch.save({"model": network, "note": fractions.Fraction(1, 3)}, foreign)
    with pytest.raises(DataError, match="trust_pickle"):
        _load_network(FastSamConfig(weights=foreign))
    trusted = _load_network(FastSamConfig(weights=foreign, trust_pickle=True))
    assert isinstance(trusted, type(network))
    renamed = foreign.rename(tmp_path / "foreign.pth")
    with pytest.raises(DataError, match=r"\*\.pt"):
        _load_network(FastSamConfig(weights=renamed, trust_pickle=True))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError):
        _load_network(FastSamConfig(weights=garbage))


def test_importing_ultralytics_leaves_pil_and_our_errors_alone(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    import PIL.Image

    from xmask.annotate.fastsam_model import _import_ultralytics
    from xmask.data.image_io import load_image
    from xmask.errors import DataError

    before = PIL.Image.open
    _import_ultralytics()
    assert PIL.Image.open is before
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="not a readable image"):
        load_image(tmp_path / "bad.jpg")
