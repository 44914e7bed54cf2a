"""Anchor ↔ ground-truth matching as mmdetection's ``MaxIoUAssigner``, vectorised.

Ground truth is padded to a fixed maximum M per image with a validity mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import box_coder, box_ops


class Targets(NamedTuple):
    """Per-anchor training targets of one image (or a batch, with a leading N)."""

    labels: jax.Array  # [A] int32; num_classes = background
    label_weights: jax.Array  # [A] float32; 0 for ignored anchors
    box_targets: jax.Array  # [A, 4] encoded deltas; zeros for non-positives
    positive: jax.Array  # [A] bool


def max_iou_assign(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.5,
    min_pos_iou: float = 0.0,
    gt_max_assign_all: bool = False,
) -> jax.Array:
    """Assigned gt per anchor [A] int32: −1 ignore, 0 negative, i+1 the i-th gt.

    anchors [A, 4], gt_boxes [M, 4] xyxy pixels, gt_valid [M] bool. Ties resolve as in
    mmdetection: an anchor's best gt is the first of equal IoUs, a gt's best anchor the first of
    equal IoUs, and when several gts pick one anchor as their best the last gt wins.
    """
    num_gts = gt_boxes.shape[0]
    iou = jnp.where(gt_valid[:, None], box_ops.pairwise_iou(gt_boxes, anchors), -1.0)  # [M, A]
    max_iou = iou.max(axis=0)
    argmax_gt = iou.argmax(axis=0)
    assigned = jnp.full(anchors.shape[0], -1, jnp.int32)
    assigned = jnp.where((max_iou >= 0) & (max_iou < neg_iou_thr), 0, assigned)
    assigned = jnp.where(max_iou >= pos_iou_thr, argmax_gt + 1, assigned)
    # Low-quality matches: each gt claims its best anchor(s), later gts overwriting earlier ones.
    gt_max = iou.max(axis=1)
    eligible = gt_valid & (gt_max >= min_pos_iou)
    if gt_max_assign_all:
        claims = iou == gt_max[:, None]
    else:
        claims = jnp.arange(anchors.shape[0])[None, :] == iou.argmax(axis=1)[:, None]
    claims = claims & eligible[:, None]  # [M, A]
    last_claim = num_gts - 1 - jnp.argmax(claims[::-1], axis=0)
    assigned = jnp.where(claims.any(axis=0), last_claim + 1, assigned)
    # No ground truth at all: every anchor is a negative.
    return jnp.where(gt_valid.any(), assigned, 0).astype(jnp.int32)


def build_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    num_classes: int,
    *,
    means: Sequence[float] = (0.0,) * 4,
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    **assign_cfg,
) -> Targets:
    """Targets for one image: anchors [A, 4], gt_boxes [M, 4], gt_labels [M], gt_valid [M]."""
    assigned = max_iou_assign(anchors, gt_boxes, gt_valid, **assign_cfg)
    positive = assigned > 0
    gt_index = jnp.maximum(assigned - 1, 0)
    labels = jnp.where(positive, gt_labels[gt_index], num_classes).astype(jnp.int32)
    # mmdetection's bbox2delta casts anchors and boxes to float32 (``.float()``) whatever the
    # model's dtype, so regression targets are float32 values even in a float64 run.
    deltas = box_coder.encode(
        anchors.astype(jnp.float32), gt_boxes[gt_index].astype(jnp.float32), means, stds
    ).astype(anchors.dtype)
    box_targets = jnp.where(positive[:, None], deltas, 0.0)
    return Targets(labels, (assigned >= 0).astype(jnp.float32), box_targets, positive)
