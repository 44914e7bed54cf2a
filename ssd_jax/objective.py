"""The training objective: network forward, anchor targets and the multibox loss."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import losses
from ssd_jax.assigner import build_targets
from ssd_jax.models import SSD


class LossOutput(NamedTuple):
    loss_cls: jax.Array     # [N] per image
    loss_bbox: jax.Array    # [N] per image
    num_pos: jax.Array      # [] positives over the (global) batch
    batch_stats: Any        # updated BatchNorm statistics (train mode), else the input's


def target_settings(config: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of ``build_targets`` from a config (train_cfg + bbox_coder)."""
    t = config.train
    return dict(num_classes=config.model.num_classes, pos_iou_thr=t.pos_iou_thr,
                neg_iou_thr=t.neg_iou_thr, min_pos_iou=t.min_pos_iou,
                gt_max_assign_all=t.gt_max_assign_all,
                means=tuple(config.model.box_coder.means), stds=tuple(config.model.box_coder.stds))


def ssd_loss(model: SSD, variables: dict, images: jax.Array, gt_boxes: jax.Array,
             gt_labels: jax.Array, gt_valid: jax.Array, anchors: jax.Array, *, train: bool,
             target_cfg: dict, neg_pos_ratio: int = 3, smoothl1_beta: float = 1.0,
             axis_name: Optional[str] = None) -> LossOutput:
    """Per-image losses of a batch.

    images [N, S, S, 3] normalised float; gt_boxes [N, M, 4] xyxy input pixels; gt_labels [N, M];
    gt_valid [N, M] bool; anchors [A, 4] (all levels concatenated). ``train`` uses batch
    statistics in BatchNorm (averaged over ``axis_name`` when given).
    """
    if train and variables.get("batch_stats"):
        (cls_out, box_out), updates = model.apply(variables, images, train=True,
                                                  mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        cls_out, box_out = model.apply(variables, images, train=train)
        batch_stats = variables.get("batch_stats", {})
    num_classes = target_cfg["num_classes"]
    cls_logits = losses.flatten_levels(cls_out, num_classes + 1)  # [N, A, C+1]
    box_deltas = losses.flatten_levels(box_out, 4)                # [N, A, 4]
    targets = jax.vmap(lambda b, l, v: build_targets(anchors, b, l, v, **target_cfg))(
        gt_boxes, gt_labels, gt_valid)
    num_pos = losses.count_positives(targets, axis_name)
    loss_cls, loss_bbox = losses.multibox_loss(cls_logits, box_deltas, targets, num_pos,
                                               neg_pos_ratio=neg_pos_ratio, beta=smoothl1_beta)
    return LossOutput(loss_cls, loss_bbox, num_pos, batch_stats)


def pad_ground_truth(boxes: list, labels: list, max_boxes: Optional[int] = None,
                     dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists of (n_i, 4) boxes and (n_i,) labels → padded [N, M, 4] (``dtype``), [N, M] int32,
    valid [N, M] bool."""
    m = max_boxes or max(1, max(len(b) for b in boxes))
    n = len(boxes)
    out_b = np.zeros((n, m, 4), dtype)
    out_l = np.zeros((n, m), np.int32)
    valid = np.zeros((n, m), bool)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        k = len(b)
        if k > m:
            raise ValueError(f"image {i} has {k} boxes, more than max_boxes={m}")
        out_b[i, :k] = np.asarray(b, dtype).reshape(-1, 4)
        out_l[i, :k] = np.asarray(l)
        valid[i, :k] = True
    return out_b, out_l, valid
