"""Test-time preprocessing as mmdetection's test pipeline and data preprocessor.

Resize to the square input without keeping the aspect ratio (cv2 bilinear, as ``mmcv.imresize``),
RGB, then ``(x - mean) / std``. Runs on the host (NumPy/OpenCV).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def resize_image(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (H, W, 3) → (size, size, 3) and the scale factor (w_scale, h_scale)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized, np.array([size / w, size / h], np.float32)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(..., 3) uint8/float RGB → float32 ``(x - mean) / std``."""
    return ((images.astype(np.float32) - np.asarray(mean, np.float32))
            / np.asarray(std, np.float32))


def preprocess_batch(images: Sequence[np.ndarray], size: int, mean: Sequence[float],
                     std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Images of any sizes → normalised (N, size, size, 3) float32 and (N, 2) scale factors."""
    resized, scales = zip(*(resize_image(im, size) for im in images))
    return normalize(np.stack(resized), mean, std), np.stack(scales)
