"""Image decoding: every mode becomes RGB uint8; bad files give errors naming the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xmask.data.image_io import (
    ImageTooLargeError,
    atomic_write_bytes,
    decode_image_bytes,
    load_image,
    load_label_map,
    save_label_map,
)
from xmask.errors import DataError
from xmask.inference.checkpoint import Checkpoint, save_checkpoint


def _colour(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_round_trip(tmp_path: Path) -> None:
    array = _colour()
    Image.fromarray(array).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.array.dtype == np.uint8 and loaded.array.shape == (12, 16, 3)
    np.testing.assert_array_equal(loaded.array, array)
    assert not loaded.greyscale and loaded.mode == "RGB"


def test_bytes_decode_as_the_file_and_the_pixel_limit_is_read_from_the_header(
    tmp_path: Path,
) -> None:
    Image.fromarray(_colour(), "RGB").convert("RGBA").save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    from_bytes = decode_image_bytes(data, "upload", max_pixels=12 * 16)
    from_file = load_image(tmp_path / "a.png", apply_exif=True)
    np.testing.assert_array_equal(from_bytes.array, from_file.array)
    assert from_bytes.mode == from_file.mode == "RGBA"
    with pytest.raises(ImageTooLargeError, match=r"upload: 16×12 image over the limit of 191"):
        decode_image_bytes(data, "upload", max_pixels=12 * 16 - 1)
    with pytest.raises(DataError, match="upload: not a readable image"):
        decode_image_bytes(b"GIF87a", "upload")


def test_greyscale_is_replicated(tmp_path: Path) -> None:
    grey = _colour()[:, :, 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.greyscale and loaded.mode == "L"
    for channel in range(3):
        np.testing.assert_array_equal(loaded.array[:, :, channel], grey)


def test_rgb_with_equal_channels_counts_as_greyscale(tmp_path: Path) -> None:
    grey = _colour()[:, :, :1].repeat(3, axis=2)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").greyscale


def test_sixteen_bit_is_mapped_to_eight(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 65535], [32896, 1000, 65280]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    loaded = load_image(tmp_path / "w.png")
    assert loaded.mode.startswith("I")
    expected = np.array([[0, 1, 255], [128, 4, 254]], dtype=np.uint8)
    np.testing.assert_array_equal(loaded.array[:, :, 1], expected)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([_colour(), np.full((12, 16), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.array, rgba[:, :, :3])


def test_palette_is_converted(tmp_path: Path) -> None:
    array = _colour()
    Image.fromarray(array).quantize(colors=16).save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.mode == "P" and loaded.array.shape == (12, 16, 3)
    reference = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(loaded.array, reference)


def test_exif_rotation_applied_only_when_asked(tmp_path: Path) -> None:
    array = _colour(10, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    Image.fromarray(array).save(tmp_path / "r.jpg", exif=exif, quality=100)
    raw = load_image(tmp_path / "r.jpg")
    shown = load_image(tmp_path / "r.jpg", apply_exif=True)
    assert raw.size == (10, 20) and not raw.exif_rotated
    assert shown.size == (20, 10) and shown.exif_rotated


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a readable image"),
        (b"this is not an image at all", "not a readable image"),
    ],
)
def test_garbage_files_name_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_colour(200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        load_image(tmp_path / "cut.jpg")
    assert "cut.jpg" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_float_image_refused(tmp_path: Path) -> None:
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="floating-point"):
        load_image(tmp_path / "f.tif")


def test_label_map_round_trip_and_checks(tmp_path: Path) -> None:
    labels = np.arange(20, dtype=np.int32).reshape(4, 5) * 3000
    save_label_map(tmp_path / "m.png", labels)
    np.testing.assert_array_equal(load_label_map(tmp_path / "m.png"), labels)
    with pytest.raises(DataError, match="image is"):
        load_label_map(tmp_path / "m.png", size=(5, 4))
    with pytest.raises(ValueError, match="65535"):
        save_label_map(tmp_path / "big.png", np.array([[70000]]))
    Image.fromarray(_colour()).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="single-channel"):
        load_label_map(tmp_path / "c.png")
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "out.json", b"{}")
        save_checkpoint(tmp_path / "ckpt", Checkpoint({"student.w": torch.zeros(2)}, {"step": 1}))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o640
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    assert stat.S_IMODE(weights.stat().st_mode) == 0o640
    assert not list(tmp_path.rglob("*.tmp"))
