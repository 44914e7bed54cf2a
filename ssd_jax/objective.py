"""The training objective: network forward, anchor targets and the multibox loss, per "GPU".

mmdetection trains SSD on G GPUs with P images each: every GPU normalises BatchNorm by its own P
images and divides its images' losses by its own number of positive anchors (``avg_factor``);
DDP then averages the gradients over GPUs. Here a batch is split into groups of
``train.per_gpu_batch`` images that play those GPUs, whatever the device count; 0 means one group
of the whole (global) batch (SyncBN, one ``avg_factor``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import losses
from ssd_jax.assigner import build_targets
from ssd_jax.errors import ConfigError
from ssd_jax.models import SSD
from ssd_jax.models.layers import BatchStats


class LossOutput(NamedTuple):
    loss_cls: jax.Array  # [N] per image, each divided by its group's avg_factor
    loss_bbox: jax.Array  # [N] per image
    avg_factor: jax.Array  # [N] each image's group's avg_factor (see group_positives)
    batch_stats: Any  # updated BatchNorm statistics (train mode), else the input's


class Grouping(NamedTuple):
    """How this device's images form "GPUs" (see ``grouping``)."""

    batch_stats: BatchStats  # for the model's BatchNorm
    group_size: int  # local images per group; 0: all local
    axis_index_groups: tuple[tuple[int, ...], ...] | None  # devices per group, or None


def grouping(
    per_gpu_batch: int, local_batch: int, num_devices: int, axis_name: str | None
) -> Grouping:
    """The groups for ``per_gpu_batch`` images per "GPU" with ``local_batch`` images on each of
    ``num_devices`` devices (pmap axis ``axis_name``; None outside pmap).

    per_gpu_batch 0 is the whole batch (SyncBN). A group lies within a device when
    ``per_gpu_batch`` divides ``local_batch``, or spans ``per_gpu_batch / local_batch``
    consecutive devices; other combinations are refused. On one device, a group of its whole
    batch is that same single group and takes per_gpu_batch 0's code: XLA:CPU ran the
    grouped form of it 14 % slower (SSDLite train step, batch 8; CPU time, 2026-12-05).
    """
    if per_gpu_batch == 0 or (num_devices == 1 and per_gpu_batch == local_batch):
        return Grouping(BatchStats(0, axis_name), 0, None)
    if local_batch % per_gpu_batch == 0:
        return Grouping(BatchStats(per_gpu_batch, axis_name), per_gpu_batch, None)
    if axis_name is not None and per_gpu_batch % local_batch == 0:
        span = per_gpu_batch // local_batch
        if num_devices % span == 0:
            groups = tuple(tuple(range(g, g + span)) for g in range(0, num_devices, span))
            return Grouping(BatchStats(0, axis_name, groups), 0, groups)
    raise ConfigError(
        f"train.per_gpu_batch={per_gpu_batch} does not fit {num_devices} device(s) with "
        f"{local_batch} image(s) each: it must divide the per-device batch, or be a multiple of "
        "it that divides the global batch"
    )


def fitting_per_gpu_batch(per_gpu_batch: int, global_batch: int, num_devices: int) -> int:
    """``per_gpu_batch`` if ``grouping`` accepts it for ``global_batch`` images on
    ``num_devices`` devices, else the accepted group size nearest to it (the larger on a tie):
    a divisor of the per-device batch, or a multiple of it spanning a divisor of the devices.
    0 (one group of the whole batch) stays 0."""
    local = global_batch // num_devices
    if per_gpu_batch == 0:
        return 0
    valid = [d for d in range(1, local + 1) if local % d == 0]
    valid += [local * k for k in range(2, num_devices + 1) if num_devices % k == 0]
    if per_gpu_batch in valid:
        return per_gpu_batch
    return min(valid, key=lambda v: (abs(v - per_gpu_batch), -v))


def target_settings(config: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of ``build_targets`` from a config (train_cfg + bbox_coder)."""
    t = config.train
    return dict(
        num_classes=config.model.num_classes,
        pos_iou_thr=t.pos_iou_thr,
        neg_iou_thr=t.neg_iou_thr,
        min_pos_iou=t.min_pos_iou,
        gt_max_assign_all=t.gt_max_assign_all,
        means=tuple(config.model.box_coder.means),
        stds=tuple(config.model.box_coder.stds),
    )


def loss_settings(config: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of ``ssd_loss`` from a config (everything but the grouping)."""
    t = config.train
    return dict(
        target_cfg=target_settings(config),
        neg_pos_ratio=t.neg_pos_ratio,
        smoothl1_beta=t.smoothl1_beta,
    )


def ssd_loss(
    model: SSD,
    variables: dict,
    images: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    anchors: jax.Array,
    *,
    train: bool,
    target_cfg: dict,
    neg_pos_ratio: int = 3,
    smoothl1_beta: float = 1.0,
    group_size: int = 0,
    axis_name: str | None = None,
    axis_index_groups: tuple[tuple[int, ...], ...] | None = None,
) -> LossOutput:
    """Per-image losses of a batch, each divided by the positives of its group of images.

    images [N, S, S, 3] normalised float; gt_boxes [N, M, 4] xyxy input pixels; gt_labels [N, M];
    gt_valid [N, M] bool; anchors [A, 4] (all levels concatenated). Groups (as ``grouping``):
    ``group_size`` consecutive images, or with 0 all N images plus, over ``axis_name``, those of
    the other devices (of the same ``axis_index_groups`` group). ``train`` uses batch statistics
    in BatchNorm (grouped as the model was built).
    """
    if train and variables.get("batch_stats"):
        (cls_out, box_out), updates = model.apply(
            variables, images, train=True, mutable=["batch_stats"]
        )
        batch_stats = updates["batch_stats"]
    else:
        cls_out, box_out = model.apply(variables, images, train=train)
        batch_stats = variables.get("batch_stats", {})
    num_classes = target_cfg["num_classes"]
    cls_logits = losses.flatten_levels(cls_out, num_classes + 1)  # [N, A, C+1]
    box_deltas = losses.flatten_levels(box_out, 4)  # [N, A, 4]
    targets = jax.vmap(lambda b, l, v: build_targets(anchors, b, l, v, **target_cfg))(
        gt_boxes, gt_labels, gt_valid
    )
    avg_factor = group_positives(
        targets.positive.sum(axis=-1), group_size, axis_name, axis_index_groups
    )
    loss_cls, loss_bbox = losses.multibox_loss(
        cls_logits, box_deltas, targets, avg_factor, neg_pos_ratio=neg_pos_ratio, beta=smoothl1_beta
    )
    return LossOutput(loss_cls, loss_bbox, avg_factor, batch_stats)


def group_positives(
    num_pos: jax.Array,
    group_size: int = 0,
    axis_name: str | None = None,
    axis_index_groups: tuple[tuple[int, ...], ...] | None = None,
) -> jax.Array:
    """Per image [N], its group's ``avg_factor``: the sum over the group's images of their
    positive anchors, each image counted as at least 1 (mmdetection's ``SamplingResult.num_pos``
    is ``max(#positives, 1)``, summed over one GPU's images). ``num_pos`` [N] per image; groups as
    in ``ssd_loss``."""
    per_image = jnp.maximum(num_pos, 1).astype(jnp.float32)
    if group_size:
        n = per_image.shape[0]
        per_group = per_image.reshape(n // group_size, group_size).sum(axis=1)
        return jnp.repeat(per_group, group_size)
    total = per_image.sum()
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name, axis_index_groups=axis_index_groups)
    return jnp.full(num_pos.shape, total)


def pad_ground_truth(
    boxes: list, labels: list, max_boxes: int | None = None, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
