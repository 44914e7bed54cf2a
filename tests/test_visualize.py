"""Drawing detections (``ssd_jax.visualize``)."""
from __future__ import annotations

import numpy as np

from ssd_jax.visualize import draw_detections


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_draw_detections_draws_in_box_and_keeps_input():
    image = np.full((64, 80, 3), 255, np.uint8)
    original = image.copy()
    drawn = draw_detections(image, np.array([[10.0, 20.0, 50.0, 60.0], [0, 0, 5, 5]]),
                            np.array([0.9, 0.1]), np.array([1, 0]), ("a", "b"), score_thr=0.3)
    np.testing.assert_array_equal(image, original)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn[20:61, 10:51] != 255).any()  # the kept box's outline
    assert (drawn[61:, :] == 255).all()  # nothing below the box (caption goes above it)
