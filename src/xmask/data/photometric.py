"""Photometric changes of a view (colour jitter, greyscale, blur, JPEG re-encoding) and the
seeded draws every augmentation takes from a ``torch.Generator`` (:mod:`xmask.data.augment`
applies them to the strong view and, with ``labeled_photometric_p``, to labeled crops)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision.transforms.v2 import functional as tvf

from xmask.data.augment_config import AugmentConfig


def uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """Uniform float in ``[lo, hi)``."""
    return lo + (hi - lo) * float(torch.rand((), generator=generator, device=generator.device))


def coin(generator: torch.Generator, p: float) -> bool:
    """True with probability ``p``."""
    return float(torch.rand((), generator=generator, device=generator.device)) < p


def randint(generator: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return lo + int(torch.randint(hi - lo + 1, (), generator=generator, device=generator.device))


def _jitter(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    brightness, contrast, saturation, hue = cfg.jitter
    adjustments = (
        (tvf.adjust_brightness, max(0.0, 1.0 - brightness), 1.0 + brightness),
        (tvf.adjust_contrast, max(0.0, 1.0 - contrast), 1.0 + contrast),
        (tvf.adjust_saturation, max(0.0, 1.0 - saturation), 1.0 + saturation),
        (tvf.adjust_hue, -hue, hue),
    )
    order = torch.randperm(len(adjustments), generator=generator, device=generator.device)
    for i in order.tolist():
        adjust, lo, hi = adjustments[i]
        image = adjust(image, uniform(generator, lo, hi))
    return image


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = 2 * math.ceil(3.0 * sigma) + 1
    return tvf.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` (``3×h×w`` float in ``[0, 1]``) encoded as JPEG at ``quality`` and decoded."""
    as_bytes = tvf.to_dtype(image.clamp(0.0, 1.0).cpu(), torch.uint8, scale=True)
    buffer = io.BytesIO()
    PILImage.fromarray(as_bytes.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(PILImage.open(buffer).convert("RGB"))
    tensor = torch.from_numpy(decoded.copy()).permute(2, 0, 1)
    return tvf.to_dtype(tensor, torch.float32, scale=True).to(image.device)


def photometric(
    image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Colour jitter, greyscale, blur and JPEG re-encoding (each with its probability): the
    strong view's changes, and those of labeled crops with ``labeled_photometric_p``.

    Args:
        image: ``3×h×w float`` in ``[0, 1]``.

    Returns:
        ``3×h×w float`` in ``[0, 1]``; ``image`` is not modified.
    """
    if coin(generator, cfg.jitter_p):
        image = _jitter(image, cfg, generator)
    if coin(generator, cfg.grayscale_p):
        image = tvf.rgb_to_grayscale(image, num_output_channels=3)
    if coin(generator, cfg.blur_p):
        image = _blur(image, uniform(generator, *cfg.blur_sigma))
    if cfg.jpeg_p > 0 and coin(generator, cfg.jpeg_p):
        image = _jpeg(image, randint(generator, *cfg.jpeg_quality))
    return image
