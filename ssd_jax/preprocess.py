"""Test-time preprocessing as mmdetection's test pipeline and data preprocessor.

Resize to the square input without keeping the aspect ratio (cv2 bilinear, as ``mmcv.imresize``)
on the host; ``(x - mean) / std`` on RGB, by ``normalize``, the one normalisation of the project
(NumPy arrays on the host, JAX arrays on the device: the train step, every detect path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np


def resize_image(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (H, W, 3) → (size, size, 3) and the scale factor (w_scale, h_scale)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized, np.array([size / w, size / h], np.float32)


def resize_batch(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of any sizes → uint8 (N, size, size, 3) and (N, 2) scale factors."""
    resized, scales = zip(*(resize_image(im, size) for im in images))
    return np.stack(resized), np.stack(scales)


def normalize(
    images: Any, mean: Sequence[float], std: Sequence[float], dtype: Any = np.float32
) -> Any:
    """(..., 3) uint8/float RGB → ``(x - mean) / std`` in ``dtype`` (float32; float64 for fp64).

    mean and std are float32 constants whatever ``dtype``, as mmdetection's data preprocessor
    holds them (float32 buffers, which ``model.double()`` casts: its float64 runs subtract the
    float32-rounded 123.675). NumPy in, NumPy out; a JAX array in (e.g. inside jit), a JAX
    array out.
    """
    mean = np.asarray(mean, np.float32).astype(dtype)
    std = np.asarray(std, np.float32).astype(dtype)
    return (images.astype(dtype) - mean) / std


def preprocess_batch(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Images of any sizes → normalised (N, size, size, 3) float32 and (N, 2) scale factors."""
    resized, scales = resize_batch(images, size)
    return normalize(resized, mean, std), scales
