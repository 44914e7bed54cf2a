"""Box geometry on xyxy boxes in pixels (jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def box_area(boxes: jax.Array) -> jax.Array:
    """[..., 4] → [...] (no +1: mmdetection's current coordinate convention)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """IoU matrix [M, K] of a [M, 4] and b [K, 4]; union floored at eps (mmdet bbox_overlaps)."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / jnp.maximum(union, eps)


def iou_one_to_many(box: jax.Array, boxes: jax.Array) -> jax.Array:
    """IoU [K] of one box [4] with boxes [K, 4] (mmcv nms, offset 0)."""
    return pairwise_iou(box[None], boxes, eps=1e-12)[0]
