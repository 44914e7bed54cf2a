"""Detections from raw head outputs, on the device, jitted, batched and fixed-shape.

Mirrors mmdetection's ``SSDHead.predict_by_feat`` with its test_cfg: softmax; drop the
background column; per level keep (anchor, class) pairs scoring above ``score_thr`` and of
those the ``nms_pre`` best (``filter_scores_and_topk``); decode; rescale to the original image;
drop boxes not wider/taller than ``min_bbox_size``; class-aware greedy NMS; keep
``max_per_img``. The outputs are padded to ``max_per_img`` with a count of valid rows.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ssd_jax import box_coder, box_ops


class Detections(NamedTuple):
    """Per image, highest score first; rows ``>= num_valid`` are padding (score 0, label -1)."""
    boxes: jax.Array      # [N, M, 4] xyxy in original-image pixels
    scores: jax.Array     # [N, M]
    labels: jax.Array     # [N, M] int32, 0..C-1
    num_valid: jax.Array  # [N] int32


def batched_nms(boxes: jax.Array, scores: jax.Array, labels: jax.Array, valid: jax.Array,
                iou_threshold: float, max_out: int) -> tuple[jax.Array, jax.Array]:
    """Greedy class-aware NMS of one image's K candidates, stopping after ``max_out`` kept.

    A box is suppressed by a higher-scoring kept box of the same label with IoU > threshold.
    Returns the kept candidates' indices [max_out] in descending score (−1 = none) and their count.
    """
    live = jnp.where(valid, scores, -jnp.inf)
    keep = jnp.full((max_out,), -1, jnp.int32)

    def cond(state):
        i, live, _ = state
        return (i < max_out) & jnp.any(live > -jnp.inf)

    def body(state):
        i, live, keep = state
        j = jnp.argmax(live)
        keep = keep.at[i].set(j.astype(jnp.int32))
        suppress = (box_ops.iou_one_to_many(boxes[j], boxes) > iou_threshold) & (labels == labels[j])
        live = jnp.where(suppress, -jnp.inf, live).at[j].set(-jnp.inf)
        return i + 1, live, keep

    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), live, keep))
    return keep, count


def _level_candidates(cls_logits: jax.Array, score_thr: float, nms_pre: int):
    """One image, one level: logits [HWA, C+1] → top scores, anchor ids, labels, valid [k]."""
    num_classes = cls_logits.shape[-1] - 1
    scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)[:, :num_classes]
    flat = scores.reshape(-1)
    k = min(nms_pre, flat.shape[0]) if nms_pre > 0 else flat.shape[0]
    top, idx = jax.lax.top_k(jnp.where(flat > score_thr, flat, -1.0), k)
    return top, idx // num_classes, idx % num_classes, top > score_thr


def postprocess(cls_logits: Sequence[jax.Array], box_deltas: Sequence[jax.Array],
                anchors: Sequence[jax.Array], scale_factors: jax.Array, *, input_size: int,
                score_thr: float, nms_pre: int, nms_iou: float, max_per_img: int,
                min_bbox_size: float = 0.0, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> Detections:
    """Batched detections.

    Args:
      cls_logits: per level [N, H, W, A·(C+1)]; box_deltas: per level [N, H, W, A·4].
      anchors: per level [H·W·A, 4] xyxy input pixels.
      scale_factors: [N, 2] (w_scale, h_scale) from original to input pixels.
    """
    n = cls_logits[0].shape[0]

    def one_image(logits_l, deltas_l, scale):
        cand_scores, cand_boxes, cand_labels, cand_valid = [], [], [], []
        for logits, deltas, level_anchors in zip(logits_l, deltas_l, anchors):
            top, anchor_idx, labels, valid = _level_candidates(logits, score_thr, nms_pre)
            boxes = box_coder.decode(level_anchors[anchor_idx], deltas[anchor_idx].astype(jnp.float32),
                                     means, stds, max_shape=(input_size, input_size))
            cand_scores.append(top)
            cand_boxes.append(boxes)
            cand_labels.append(labels)
            cand_valid.append(valid)
        scores = jnp.concatenate(cand_scores)
        boxes = jnp.concatenate(cand_boxes) / jnp.tile(scale, 2)  # → original pixels
        labels = jnp.concatenate(cand_labels).astype(jnp.int32)
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = jnp.concatenate(cand_valid) & jnp.all(wh > min_bbox_size, axis=-1)
        keep, count = batched_nms(boxes, scores, labels, valid, nms_iou, max_per_img)
        ok = keep >= 0
        safe = jnp.maximum(keep, 0)
        return (jnp.where(ok[:, None], boxes[safe], 0.0), jnp.where(ok, scores[safe], 0.0),
                jnp.where(ok, labels[safe], -1), count)

    # [N, H, W, A·K] → [N, H·W·A, K], the (y, x, a) order of the anchors.
    num_anchors = [a.shape[0] // (l.shape[1] * l.shape[2]) for a, l in zip(anchors, cls_logits)]
    boxes, scores, labels, count = jax.vmap(one_image)(
        [l.reshape(n, -1, l.shape[-1] // a) for l, a in zip(cls_logits, num_anchors)],
        [d.reshape(n, -1, 4) for d in box_deltas],
        scale_factors.astype(jnp.float32))
    return Detections(boxes, scores, labels, count)
