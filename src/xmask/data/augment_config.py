"""The augmentation's parameters, apart from the transforms (so that reading a training
configuration does not import torchvision)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the weak/strong augmentation (defaults: the authors' Mean Teacher setup).

    Attributes:
        scale_range: ``(lo, hi)`` of the random resize factor.
        scale_log_uniform: draw the factor uniformly in ``log`` (so ×0.5 and ×2 are as
            likely) instead of uniformly; for wide ranges that show heads at many sizes.
        crop_size: crop side in pixels, or ``(height, width)``.
        flip_p: probability of a horizontal flip.
        jitter: maximum ``(brightness, contrast, saturation, hue)`` change; factors are drawn
            from ``U(1 − b, 1 + b)`` (hue: ``U(−h, h)``).
        jitter_p: probability of applying colour jitter (strong view).
        grayscale_p: probability of converting to greyscale (strong view).
        blur_sigma: ``(lo, hi)`` of the Gaussian blur sigma in pixels (strong view).
        blur_p: probability of blurring (strong view).
        cutout_frac: ``(lo, hi)`` fraction of each crop side taken by the cutout rectangle.
        cutout_fill: value written into the cutout area of the image (in ``[0, 1]``).
        jpeg_p: probability of re-encoding the view as JPEG (photometric changes).
        jpeg_quality: ``(lo, hi)`` of the JPEG quality drawn uniformly (integers, 1–100).
        labeled_photometric_p: probability that a labeled crop gets the photometric changes
            (jitter, greyscale, blur, JPEG, each with its own probability) on top of its
            geometry; 0 (the authors): labeled crops are geometry-only.
    """

    scale_range: tuple[float, float] = (0.7, 1.3)
    crop_size: int | tuple[int, int] = 256
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.25
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.8
    cutout_frac: tuple[float, float] = (0.125, 0.25)
    cutout_fill: float = 0.0
    scale_log_uniform: bool = False
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    labeled_photometric_p: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "scale_range": 0.0 < self.scale_range[0] <= self.scale_range[1],
            "crop_size": min(self.crop_hw) >= 1,
            "jitter": min(self.jitter) >= 0.0 and self.jitter[3] <= 0.5,
            "blur_sigma": 0.0 < self.blur_sigma[0] <= self.blur_sigma[1],
            "cutout_frac": 0.0 < self.cutout_frac[0] <= self.cutout_frac[1] <= 1.0,
            "jpeg_quality": 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100,
        }
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "jpeg_p"):
            checks[name] = 0.0 <= getattr(self, name) <= 1.0
        checks["labeled_photometric_p"] = 0.0 <= self.labeled_photometric_p <= 1.0
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid AugmentConfig field(s): {', '.join(bad)}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the crop."""
        if isinstance(self.crop_size, int):
            return self.crop_size, self.crop_size
        return int(self.crop_size[0]), int(self.crop_size[1])
