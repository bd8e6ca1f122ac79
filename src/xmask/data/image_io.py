"""Image files in, RGB ``uint8`` arrays out, with clear errors for bad files.

Every image reaches xmask as an ``H×W×3 uint8`` RGB array, whatever its file held:
greyscale and 1-bit images are replicated to three channels, 16-bit and 32-bit integer images
are mapped to 8 bits (``round(v / 257)``), alpha channels are dropped, palette and CMYK/YCbCr/LAB
images are converted. Corrupt, truncated, empty and floating-point images raise
:class:`~xmask.errors.DataError` naming the file.

EXIF orientation: ``apply_exif=True`` returns the image as a viewer shows it (rotated by its EXIF
tag). The benchmark datasets were annotated on the raw pixel array, so their readers pass False;
the plain folder format passes True (annotation tools display the rotated image).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xmask.data.files import atomic_write_bytes
from xmask.errors import DataError, UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """An image file decoded to RGB.

    Attributes:
        array: ``H×W×3 uint8`` RGB.
        mode: the file's PIL mode before conversion (e.g. ``"L"``, ``"I;16"``, ``"RGBA"``).
        greyscale: the image carries no colour (single-channel file, or three equal channels).
        exif_rotated: the EXIF orientation tag was applied.
    """

    array: np.ndarray
    mode: str
    greyscale: bool
    exif_rotated: bool

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.array.shape[0]), int(self.array.shape[1])


def max_image_pixels() -> int:
    """The largest image (pixels) decoded: Pillow's decompression-bomb limit, 89,478,485 unless
    :func:`set_max_image_pixels` (``--max-image-pixels``) changed it."""
    return int(Image.MAX_IMAGE_PIXELS or 0)


def set_max_image_pixels(pixels: int) -> None:
    """Allow images up to ``pixels`` pixels (a 108 MP photo, a 30000×3000 panorama) for the
    whole process (Pillow's limit); larger ones are refused as possible decompression bombs.

    Raises:
        ValueError: ``pixels < 1``.
    """
    if pixels < 1:
        raise ValueError(f"the image pixel limit must be positive, got {pixels}")
    Image.MAX_IMAGE_PIXELS = int(pixels)


class ImageTooLargeError(DataError):
    """An image over a pixel limit (:func:`decode_image_bytes`'s, or Pillow's
    decompression-bomb limit)."""


def _decode(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(path, "image file not found")
    return _open(path, path)


def _open(source: Path | BinaryIO, path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` (errors name ``path``), refusing more than ``max_pixels`` pixels from
    the header, before the pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            too_large = max_pixels is not None and image.width * image.height > max_pixels
            if not too_large:
                image.load()
    except UnidentifiedImageError as err:
        raise DataError(path, "not a readable image (unknown format or corrupt header)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(
            path,
            f"image over {max_image_pixels():,} pixels, refused as a possible decompression bomb;"
            " allow it with --max-image-pixels N",
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"corrupt or truncated image ({err})") from err
    if too_large:
        raise ImageTooLargeError(
            path, f"{image.width}×{image.height} image over the limit of {max_pixels:,} pixels"
        )
    if image.width == 0 or image.height == 0:
        raise DataError(path, "image has zero width or height")
    return image


def to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "F":
        raise DataError(path, "floating-point images are not supported; save it as 8 or 16 bit")
    if mode == "I" or mode.startswith("I;16"):
        wide = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGBA" if mode == "P" else mode).convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _is_grey(array: np.ndarray) -> bool:
    return bool(
        np.array_equal(array[:, :, 0], array[:, :, 1])
        and np.array_equal(array[:, :, 1], array[:, :, 2])
    )


def load_image(path: str | Path, *, apply_exif: bool = False) -> LoadedImage:
    """Decode an image file to RGB ``uint8``.

    Args:
        path: the image file.
        apply_exif: rotate/flip by the EXIF orientation tag (see module docstring).

    Raises:
        DataError: missing, corrupt, truncated, empty or floating-point image.
    """
    path = Path(path)
    return _loaded(_decode(path), path, apply_exif)


def decode_image_bytes(
    data: bytes, name: str, *, max_pixels: int | None = None, apply_exif: bool = True
) -> LoadedImage:
    """Decode an image file's bytes (an upload) to RGB ``uint8``, as :func:`load_image` decodes
    a file.

    Args:
        data: the encoded image (JPEG, PNG, ...).
        name: what error messages call it (never opened as a path).
        max_pixels: refuse images of more pixels, from the header before decoding the pixels
            (None: only Pillow's decompression-bomb limit).
        apply_exif: rotate/flip by the EXIF orientation tag.

    Raises:
        ImageTooLargeError: over ``max_pixels`` or Pillow's limit.
        DataError: not an image, corrupt, truncated, empty or floating-point.
    """
    path = Path(name)
    return _loaded(_open(io.BytesIO(data), path, max_pixels), path, apply_exif)


def _loaded(image: Image.Image, path: Path, apply_exif: bool) -> LoadedImage:
    mode = image.mode
    rotated = False
    if apply_exif and image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
        rotated = True
    array = to_rgb_array(image, path)
    grey = mode in _GREY_MODES or _is_grey(array)
    return LoadedImage(array=array, mode=mode, greyscale=grey, exif_rotated=rotated)


def load_label_map(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance label map (8- or 16-bit single-channel PNG) as ``H×W int32``.

    Raises:
        DataError: missing or unreadable file, colour image, or a size other than ``size``.
    """
    path = Path(path)
    image = _decode(path)
    if image.mode not in {"L", "I", "I;16", "I;16L", "I;16B", "I;16N"}:
        raise DataError(path, f"label map must be a single-channel image, got mode {image.mode}")
    labels = np.asarray(image).astype(np.int32)
    if size is not None and labels.shape != tuple(size):
        raise DataError(path, f"label map is {labels.shape}, image is {tuple(size)}")
    return labels


def save_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Write an ``H×W`` label map as a 16-bit PNG, atomically.

    Raises:
        ValueError: labels outside ``[0, 65535]``.
    """

    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"{path}: labels must lie in [0, 65535] to fit a 16-bit PNG")
    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint16)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    """``image`` (``H×W×3 uint8``) encoded as JPEG (an overlay: a tenth of the PNG's size)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (``H×W×3 uint8``) encoded as PNG, at zlib level 1: a photo-like overlay
    compresses about as well as at the default level 6 (5 % larger), four to five times faster."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


ImageInput = np.ndarray | Image.Image | str | Path
"""What :class:`~xmask.inference.predictor.Predictor` accepts: ``H×W×3 uint8`` RGB, a PIL
image, or an image file."""


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """``H×W×3 uint8`` RGB of an array, a PIL image or an image file.

    A file is decoded by :func:`load_image`, EXIF orientation applied;
    a PIL image is converted as that function converts files (greyscale, 16-bit, palette, alpha).

    Raises:
        DataError: an unreadable file.
        UsageError: an array that is not ``H×W×3 uint8``, or another type.
    """
    if isinstance(image, (str, Path)):
        return load_image(image, apply_exif=True).array
    if isinstance(image, Image.Image):
        return to_rgb_array(image, Path(f"<PIL image {image.mode}>"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UsageError(f"image array must be H×W×3 uint8, got {image.shape} {image.dtype}")
        return image
    raise UsageError(f"expected an image array, PIL image or path, got {type(image).__name__}")
