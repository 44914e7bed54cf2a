"""The JAX functions that are exported, closed over a Detector's weights and settings.

Every exported function takes uint8 RGB images (B, S, S, 3), already resized to the config's
square input size S (cv2 bilinear, as ``Detector.resize``), and normalises them inside.

- ``raw_fn``: head outputs only, all levels concatenated in the anchors' order.
- ``detect_fn``: the project's detect path (``ssd_jax.inference``: ``postprocess`` with its
  ``lax.while_loop`` NMS), for ``jax.export``.
- ``candidates_fn``: everything before NMS (``postprocess.candidates``), which jax2onnx lowers to
  plain ONNX; ``onnx_nms`` appends NonMaxSuppression and the final top-k.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import postprocess as post
from ssd_jax.inference import make_detect_fn
from ssd_jax.models.assembly import test_settings
from ssd_jax.preprocess import normalize


class Settings(NamedTuple):
    """What the exported graphs bake in, from a Detector's config (test_cfg and box coder)."""

    input_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    score_thr: float  # mmdet test_cfg.score_thr (0.02)
    nms_pre: int  # mmdet test_cfg.nms_pre (1000), per level
    nms_iou: float  # mmdet test_cfg.nms.iou_threshold (0.45)
    max_per_img: int  # mmdet test_cfg.max_per_img (200)
    min_bbox_size: float  # mmdet test_cfg.min_bbox_size (0)
    means: tuple[float, ...]  # DeltaXYWHBBoxCoder target_means
    stds: tuple[float, ...]  # DeltaXYWHBBoxCoder target_stds


def settings_of(detector) -> Settings:
    c = detector.config
    return Settings(
        num_classes=int(c.model.num_classes),
        mean=tuple(c.model.mean),
        std=tuple(c.model.std),
        **test_settings(c),
    )


def _head_outputs(detector, images: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    c = detector.config
    x = normalize(images, c.model.mean, c.model.std)
    cls_logits, box_deltas = detector.model.apply(detector.variables, x, train=False)
    return (
        [o.astype(jnp.float32) for o in cls_logits],
        [d.astype(jnp.float32) for d in box_deltas],
    )


def raw_fn(detector) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """images uint8 (B, S, S, 3) → cls_logits (B, A, C+1), bbox_deltas (B, A, 4).

    A counts all levels' anchors in ``np.concatenate(detector.anchors())`` order; class C is
    background. Decode with ``box_coder.decode`` (means/stds of the config) after a softmax.
    """
    num_classes = detector.config.model.num_classes

    def raw(images):
        cls_logits, box_deltas = _head_outputs(detector, images)
        n = images.shape[0]
        return (
            jnp.concatenate([c.reshape(n, -1, num_classes + 1) for c in cls_logits], axis=1),
            jnp.concatenate([d.reshape(n, -1, 4) for d in box_deltas], axis=1),
        )

    return raw


def detect_fn(detector) -> Callable[[jax.Array, jax.Array], post.Detections]:
    """(images uint8 (B, S, S, 3), scale_factors (B, 2)) → ``postprocess.Detections``."""
    detect = make_detect_fn(detector.config, detector.model, detector.anchors())
    return functools.partial(detect, detector.variables)


class Candidates(NamedTuple):
    """``postprocess.Candidates`` as the ONNX NMS takes them."""

    boxes: jax.Array  # (B, K, 4) xyxy original-image pixels
    scores: jax.Array  # (B, K) softmax score; -1 where not a candidate
    labels: jax.Array  # (B, K) int32 class 0..C-1
    class_scores: jax.Array  # (B, C, K) the score in row ``labels``, -1 elsewhere


def candidates_fn(detector) -> Callable[[jax.Array, jax.Array], Candidates]:
    """(images uint8 (B, S, S, 3), scale_factors (B, 2) float32) → ``Candidates``."""
    settings = test_settings(detector.config)
    del settings["nms_iou"], settings["max_per_img"]
    anchors = [jnp.asarray(a) for a in detector.anchors()]
    num_classes = detector.config.model.num_classes

    def cands(images, scale_factors):
        cls_logits, box_deltas = _head_outputs(detector, images)
        c = post.candidates(cls_logits, box_deltas, anchors, scale_factors, **settings)
        scores = jnp.where(c.valid, c.scores, -1.0)
        one_hot = c.labels[:, None, :] == jnp.arange(num_classes, dtype=jnp.int32)[None, :, None]
        return Candidates(c.boxes, scores, c.labels, jnp.where(one_hot, scores[:, None, :], -1.0))

    return cands
