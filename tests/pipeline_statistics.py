"""Per-draw statistics of PhotoMetricDistortion's output on the test image, shared by
tests/test_pipeline_distributions.py and scripts/make_pipeline_distribution_reference.py (which
runs in mmdetection's environment: NumPy only here)."""

from __future__ import annotations

import numpy as np

PHOTO_STATISTICS = (
    "photo_shift_r",
    "photo_shift_g",
    "photo_shift_b",
    "photo_contrast",
    "photo_brightness",
    "photo_hue",
    "photo_saturation",
)


def photo_image(seed: int = 0) -> np.ndarray:
    """uint8 RGB (32, 32, 3): left half gray texture (R = G = B, 60–199), right half a warm
    colour (170, 120, 90) with a little noise. Gray pixels see only brightness and contrast (no
    saturation, hue or channel swap changes them); the colour half shows the rest."""
    rng = np.random.default_rng(seed)
    image = np.empty((32, 32, 3), np.uint8)
    image[:, :16] = rng.integers(60, 200, (32, 16, 1))
    image[:, 16:] = np.clip(np.array([170, 120, 90]) + rng.normal(0, 6, (32, 16, 3)), 0, 255)
    return image


def _angle(rgb: np.ndarray) -> float:
    """The colour's angle around the gray axis, degrees (the hexagonal hue's smooth cousin)."""
    r, g, b = rgb
    return float(np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)))


def _saturation(rgb: np.ndarray) -> float:
    return float((rgb.max() - rgb.min()) / abs(rgb.max()))


def photo_statistics(out: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """Statistics of one distorted output ``out`` (float (32, 32, 3), RGB) of ``image``.

    photo_shift_{r,g,b}: the output's channel mean minus the input's (pixel values);
    photo_contrast: gray half's standard deviation, output / input (the contrast factor, 1 off);
    photo_brightness: gray half's mean output / photo_contrast − mean input (the brightness
    delta, 0 off); photo_hue: change of the colour half's mean colour's angle, degrees in
    [−180, 180); photo_saturation: its (max − min) / max, output / input.
    """
    out, image = np.asarray(out, np.float64), np.asarray(image, np.float64)
    gray_in, gray_out = image[:, :16].mean(-1), out[:, :16].mean(-1)
    contrast = gray_out.std() / gray_in.std()
    colour_in, colour_out = image[:, 16:].mean((0, 1)), out[:, 16:].mean((0, 1))
    shift = out.mean((0, 1)) - image.mean((0, 1))
    return {
        "photo_shift_r": float(shift[0]),
        "photo_shift_g": float(shift[1]),
        "photo_shift_b": float(shift[2]),
        "photo_contrast": float(contrast),
        "photo_brightness": float(gray_out.mean() / contrast - gray_in.mean()),
        "photo_hue": (_angle(colour_out) - _angle(colour_in) + 180) % 360 - 180,
        "photo_saturation": _saturation(colour_out) / _saturation(colour_in),
    }
