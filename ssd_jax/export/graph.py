"""The JAX functions that are exported, closed over a Detector's weights and settings.

Every exported function takes uint8 RGB images (B, S, S, 3), already resized to the config's
square input size S (cv2 bilinear, as ``Detector.preprocess``), and normalises them inside:
``(x - mean) / std`` with the config's mean/std.

- ``raw_fn``: head outputs only, all levels concatenated in the anchors' order.
- ``detect_fn``: the reference detection function (``ssd_jax.postprocess``, its
  ``lax.while_loop`` NMS included), for ``jax.export``.
- ``candidates_fn``: everything before NMS (softmax, score threshold, per-level top ``nms_pre``,
  decoding, rescaling, ``min_bbox_size``), written batched without ``vmap`` so that jax2onnx
  lowers it to plain ONNX; ``onnx_nms`` appends NonMaxSuppression and the final top-k.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import box_coder
from ssd_jax import postprocess as post


class Settings(NamedTuple):
    """What the exported graphs bake in, from a Detector's config (test_cfg and box coder)."""
    input_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    score_thr: float       # mmdet test_cfg.score_thr (0.02)
    nms_pre: int           # mmdet test_cfg.nms_pre (1000), per level
    nms_iou: float         # mmdet test_cfg.nms.iou_threshold (0.45)
    max_per_img: int       # mmdet test_cfg.max_per_img (200)
    min_bbox_size: float   # mmdet test_cfg.min_bbox_size (0)
    means: tuple[float, ...]  # DeltaXYWHBBoxCoder target_means
    stds: tuple[float, ...]   # DeltaXYWHBBoxCoder target_stds


def settings_of(detector) -> Settings:
    c = detector.config
    t, box = c.test, c.model.box_coder
    return Settings(int(c.input_size), int(c.model.num_classes), tuple(c.model.mean),
                    tuple(c.model.std), float(t.score_thr), int(t.nms_pre), float(t.nms_iou),
                    int(t.max_per_img), float(t.min_bbox_size), tuple(box.means), tuple(box.stds))


def normalize(images: jax.Array, s: Settings) -> jax.Array:
    """uint8 (B, S, S, 3) RGB → float32 ``(x - mean) / std``."""
    mean = np.asarray(s.mean, np.float32)
    std = np.asarray(s.std, np.float32)
    return (images.astype(jnp.float32) - mean) / std


def _head_outputs(detector, images: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    x = normalize(images, settings_of(detector))
    cls_logits, box_deltas = detector.model.apply(detector.variables, x, train=False)
    return ([c.astype(jnp.float32) for c in cls_logits],
            [d.astype(jnp.float32) for d in box_deltas])


def raw_fn(detector) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """images uint8 (B, S, S, 3) → cls_logits (B, A, C+1), bbox_deltas (B, A, 4).

    A counts all levels' anchors in ``np.concatenate(detector.anchors())`` order; class C is
    background. Decode with ``box_coder.decode`` (means/stds of the config) after a softmax.
    """
    num_classes = detector.config.model.num_classes

    def raw(images):
        cls_logits, box_deltas = _head_outputs(detector, images)
        n = images.shape[0]
        return (jnp.concatenate([c.reshape(n, -1, num_classes + 1) for c in cls_logits], axis=1),
                jnp.concatenate([d.reshape(n, -1, 4) for d in box_deltas], axis=1))
    return raw


def detect_fn(detector) -> Callable[[jax.Array, jax.Array], post.Detections]:
    """(images uint8 (B, S, S, 3), scale_factors (B, 2)) → ``postprocess.Detections``."""
    s = settings_of(detector)
    anchors = [jnp.asarray(a) for a in detector.anchors()]

    def detect(images, scale_factors):
        cls_logits, box_deltas = _head_outputs(detector, images)
        return post.postprocess(cls_logits, box_deltas, anchors, scale_factors,
                                input_size=s.input_size, score_thr=s.score_thr,
                                nms_pre=s.nms_pre, nms_iou=s.nms_iou, max_per_img=s.max_per_img,
                                min_bbox_size=s.min_bbox_size, means=s.means, stds=s.stds)
    return detect


class Candidates(NamedTuple):
    """Per image the K pre-NMS (anchor, class) candidates; K = Σ_levels min(nms_pre, H·W·A·C)."""
    boxes: jax.Array         # (B, K, 4) xyxy original-image pixels
    scores: jax.Array        # (B, K) softmax score; -1 where not a candidate
    labels: jax.Array        # (B, K) int32 class 0..C-1
    class_scores: jax.Array  # (B, C, K) the score in row ``labels``, -1 elsewhere (for ONNX NMS)


def candidates(cls_logits: Sequence[jax.Array], box_deltas: Sequence[jax.Array],
               anchors: Sequence[jax.Array], scale_factors: jax.Array, s: Settings) -> Candidates:
    """``postprocess.postprocess`` up to NMS, batched with gathers instead of ``vmap``.

    cls_logits per level (B, H, W, A·(C+1)); box_deltas (B, H, W, A·4); anchors (H·W·A, 4)
    xyxy input pixels; scale_factors (B, 2) (w_scale, h_scale) original → input pixels.
    """
    n = cls_logits[0].shape[0]
    c = s.num_classes
    all_scores, all_boxes, all_labels = [], [], []
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        num_anchors = level_anchors.shape[0]
        probs = jax.nn.softmax(logits.reshape(n, num_anchors, c + 1), axis=-1)[..., :c]
        flat = probs.reshape(n, num_anchors * c)
        # mmdet filter_scores_and_topk: keep scores > score_thr, then the nms_pre best.
        k = min(s.nms_pre, flat.shape[1]) if s.nms_pre > 0 else flat.shape[1]
        top, idx = jax.lax.top_k(jnp.where(flat > s.score_thr, flat, -1.0), k)
        # idx ≥ 0: lax.div truncates as floor division; jnp's // and % add sign fix-ups
        # (lax.rem), which jax2onnx 0.17.1 cannot lower with a symbolic batch.
        anchor_idx = jax.lax.div(idx, jnp.int32(c))
        label = idx - anchor_idx * c
        sel_deltas = jnp.take_along_axis(deltas.reshape(n, num_anchors, 4),
                                         anchor_idx[..., None], axis=1)
        sel_anchors = jnp.take(level_anchors, anchor_idx, axis=0)
        boxes = box_coder.decode(sel_anchors, sel_deltas, s.means, s.stds,
                                 max_shape=(s.input_size, s.input_size))
        all_scores.append(top)
        all_boxes.append(boxes)
        all_labels.append(label.astype(jnp.int32))
    scores = jnp.concatenate(all_scores, axis=1)
    boxes = jnp.concatenate(all_boxes, axis=1) / jnp.tile(scale_factors, 2)[:, None, :]
    labels = jnp.concatenate(all_labels, axis=1)
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = (scores > s.score_thr) & jnp.all(wh > s.min_bbox_size, axis=-1)
    scores = jnp.where(valid, scores, -1.0)
    one_hot = labels[:, None, :] == jnp.arange(c, dtype=jnp.int32)[None, :, None]
    class_scores = jnp.where(one_hot, scores[:, None, :], -1.0)
    return Candidates(boxes, scores, labels, class_scores)


def candidates_fn(detector) -> Callable[[jax.Array, jax.Array], Candidates]:
    """(images uint8 (B, S, S, 3), scale_factors (B, 2) float32) → ``Candidates``."""
    s = settings_of(detector)
    anchors = [jnp.asarray(a) for a in detector.anchors()]

    def cands(images, scale_factors):
        cls_logits, box_deltas = _head_outputs(detector, images)
        return candidates(cls_logits, box_deltas, anchors, scale_factors.astype(jnp.float32), s)
    return cands
