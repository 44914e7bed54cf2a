"""The detect path: uint8 images in, normalised on the device, network, decoding and NMS.

One function, used under ``jax.jit`` by ``Detector.predict`` / ``benchmark`` and under
``jax.pmap`` by evaluation (``eval.py`` and validation during training):

    detect = make_detect_fn(config, model, anchors)
    dets = jax.jit(detect)(variables, images_uint8, scale_factors)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import postprocess
from ssd_jax.models.assembly import input_dtype, test_settings
from ssd_jax.models.ssd import SSD
from ssd_jax.preprocess import normalize

DetectFn = Callable[[dict, jax.Array, jax.Array], postprocess.Detections]


def make_detect_fn(
    config: ml_collections.ConfigDict, model: SSD, anchors: Sequence[np.ndarray]
) -> DetectFn:
    """``(variables, images, scale_factors) → Detections`` for ``config`` (not yet jitted).

    images: uint8 RGB [N, S, S, 3] resized to the input size; scale_factors: [N, 2] (w_scale,
    h_scale) from original to input pixels. Detections are padded to ``test.max_per_img`` rows,
    boxes xyxy in original-image pixels (see ``postprocess.Detections``).
    """
    mean, std = tuple(config.model.mean), tuple(config.model.std)
    dtype = input_dtype(config)
    settings = test_settings(config)
    level_anchors = [np.asarray(a) for a in anchors]

    def detect(
        variables: dict, images: jax.Array, scale_factors: jax.Array
    ) -> postprocess.Detections:
        x = normalize(images, mean, std, dtype)
        cls_logits, box_deltas = model.apply(variables, x, train=False)
        return postprocess.postprocess(
            cls_logits,
            box_deltas,
            [jnp.asarray(a) for a in level_anchors],
            scale_factors,
            **settings,
        )

    return detect
