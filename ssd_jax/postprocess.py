"""Detections from raw head outputs, on the device, jitted, batched and fixed-shape.

Mirrors mmdetection's ``SSDHead.predict_by_feat`` with its test_cfg: softmax; drop the
background column; per level keep (anchor, class) pairs scoring above ``score_thr`` and of
those the ``nms_pre`` best (``filter_scores_and_topk``); decode; rescale to the original image;
drop boxes not wider/taller than ``min_bbox_size``; class-aware greedy NMS; keep
``max_per_img``. The outputs are padded to ``max_per_img`` with a count of valid rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import box_coder, box_ops


class Detections(NamedTuple):
    """Per image, highest score first; rows ``>= num_valid`` are padding (score 0, label -1)."""

    boxes: jax.Array  # [N, M, 4] xyxy in original-image pixels
    scores: jax.Array  # [N, M]
    labels: jax.Array  # [N, M] int32, 0..C-1
    num_valid: jax.Array  # [N] int32


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    iou_threshold: float,
    max_out: int,
) -> tuple[jax.Array, jax.Array]:
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
        suppress = (box_ops.iou_one_to_many(boxes[j], boxes) > iou_threshold) & (
            labels == labels[j]
        )
        live = jnp.where(suppress, -jnp.inf, live).at[j].set(-jnp.inf)
        return i + 1, live, keep

    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), live, keep))
    return keep, count


class Candidates(NamedTuple):
    """Per image the K pre-NMS (anchor, class) candidates; K = Σ_levels min(nms_pre, H·W·A·C)."""

    boxes: jax.Array  # [N, K, 4] xyxy original-image pixels
    scores: jax.Array  # [N, K] softmax score of (anchor, class)
    labels: jax.Array  # [N, K] int32 class 0..C-1
    valid: jax.Array  # [N, K] bool: above score_thr and wider/taller than min_bbox_size


def candidates(
    cls_logits: Sequence[jax.Array],
    box_deltas: Sequence[jax.Array],
    anchors: Sequence[jax.Array],
    scale_factors: jax.Array,
    *,
    input_size: int,
    score_thr: float,
    nms_pre: int,
    min_bbox_size: float = 0.0,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> Candidates:
    """mmdetection's ``predict_by_feat`` up to NMS, batched (gathers, no ``vmap``: the ONNX
    export lowers this same function).

    cls_logits per level [N, H, W, A·(C+1)]; box_deltas [N, H, W, A·4]; anchors [H·W·A, 4]
    xyxy input pixels; scale_factors [N, 2] (w_scale, h_scale) original → input pixels.
    """
    n = cls_logits[0].shape[0]
    all_scores, all_boxes, all_labels = [], [], []
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors):
        num_anchors = level_anchors.shape[0]
        c = logits.shape[1] * logits.shape[2] * logits.shape[3] // num_anchors - 1
        probs = jax.nn.softmax(logits.astype(jnp.float32).reshape(n, num_anchors, c + 1), axis=-1)[
            ..., :c
        ]  # the last class is background
        flat = probs.reshape(n, num_anchors * c)
        # mmdet filter_scores_and_topk: scores > score_thr, then the nms_pre best.
        k = min(nms_pre, flat.shape[1]) if nms_pre > 0 else flat.shape[1]
        top, idx = jax.lax.top_k(jnp.where(flat > score_thr, flat, -1.0), k)
        # idx >= 0: lax.div is floor division here; jnp's // and % add sign fix-ups (lax.rem)
        # that jax2onnx cannot lower with a symbolic batch.
        anchor_idx = jax.lax.div(idx, jnp.int32(c))
        label = idx - anchor_idx * c
        sel_deltas = jnp.take_along_axis(
            deltas.astype(jnp.float32).reshape(n, num_anchors, 4), anchor_idx[..., None], axis=1
        )
        sel_anchors = jnp.take(level_anchors, anchor_idx, axis=0)
        all_boxes.append(
            box_coder.decode(
                sel_anchors, sel_deltas, means, stds, max_shape=(input_size, input_size)
            )
        )
        all_scores.append(top)
        all_labels.append(label.astype(jnp.int32))
    scores = jnp.concatenate(all_scores, axis=1)
    boxes = (
        jnp.concatenate(all_boxes, axis=1)
        / jnp.tile(scale_factors.astype(jnp.float32), 2)[:, None, :]
    )  # → original pixels
    labels = jnp.concatenate(all_labels, axis=1)
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = (scores > score_thr) & jnp.all(wh > min_bbox_size, axis=-1)
    return Candidates(boxes, scores, labels, valid)


def postprocess(
    cls_logits: Sequence[jax.Array],
    box_deltas: Sequence[jax.Array],
    anchors: Sequence[jax.Array],
    scale_factors: jax.Array,
    *,
    input_size: int,
    score_thr: float,
    nms_pre: int,
    nms_iou: float,
    max_per_img: int,
    min_bbox_size: float = 0.0,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> Detections:
    """Batched detections: ``candidates`` then class-aware NMS per image.

    Args:
      cls_logits: per level [N, H, W, A·(C+1)]; box_deltas: per level [N, H, W, A·4].
      anchors: per level [H·W·A, 4] xyxy input pixels.
      scale_factors: [N, 2] (w_scale, h_scale) from original to input pixels.
    """
    cand = candidates(
        cls_logits,
        box_deltas,
        anchors,
        scale_factors,
        input_size=input_size,
        score_thr=score_thr,
        nms_pre=nms_pre,
        min_bbox_size=min_bbox_size,
        means=means,
        stds=stds,
    )

    def one_image(boxes, scores, labels, valid):
        keep, count = batched_nms(boxes, scores, labels, valid, nms_iou, max_per_img)
        ok = keep >= 0
        safe = jnp.maximum(keep, 0)
        return (
            jnp.where(ok[:, None], boxes[safe], 0.0),
            jnp.where(ok, scores[safe], 0.0),
            jnp.where(ok, labels[safe], -1),
            count,
        )

    return Detections(*jax.vmap(one_image)(*cand))
