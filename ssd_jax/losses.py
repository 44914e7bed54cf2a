"""SSD's multibox loss as mmdetection's ``SSDHead.loss_by_feat``, in fixed shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssd_jax.assigner import Targets

# mmdetection's weight_reduce_loss divides by (avg_factor + float32 eps).
_EPS = float(jnp.finfo(jnp.float32).eps)


def smooth_l1(diff: jax.Array, beta: float = 1.0) -> jax.Array:
    d = jnp.abs(diff)
    return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def hard_negative_sum(
    neg_losses: jax.Array, is_negative: jax.Array, num_keep: jax.Array
) -> jax.Array:
    """Sum of the ``num_keep`` largest losses among negatives ([A] each); a sort and a rank mask."""
    ranked = jnp.sort(jnp.where(is_negative, neg_losses, -jnp.inf))[::-1]
    keep = jnp.arange(ranked.shape[0]) < num_keep
    return jnp.sum(jnp.where(keep, ranked, 0.0))


def multibox_loss(
    cls_logits: jax.Array,
    box_deltas: jax.Array,
    targets: Targets,
    avg_factor: jax.Array,
    *,
    neg_pos_ratio: int = 3,
    beta: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-image (loss_cls [N], loss_bbox [N]).

    cls_logits [N, A, C+1], box_deltas [N, A, 4], targets with a leading N. ``avg_factor`` [N]
    (or a scalar): each image's divisor, the positives of its "GPU"'s images (each image
    counting at least 1, see ``objective.group_positives``).
    Classification: softmax cross-entropy over all positives plus, per image, the
    ``neg_pos_ratio``·positives highest-loss negatives. Regression: smooth L1 on positives.
    """
    num_classes = cls_logits.shape[-1] - 1
    acc = jnp.promote_types(cls_logits.dtype, jnp.float32)  # bf16 → f32; f64 stays
    logits = cls_logits.astype(acc)
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets.labels[..., None], axis=-1)[..., 0]
    ce = (log_norm - picked) * targets.label_weights  # [N, A]
    positive = targets.positive
    negative = targets.labels == num_classes
    num_pos = positive.sum(axis=-1)
    num_neg = jnp.minimum(neg_pos_ratio * num_pos, negative.sum(axis=-1))
    pos_sum = jnp.sum(jnp.where(positive, ce, 0.0), axis=-1)
    neg_sum = jax.vmap(hard_negative_sum)(ce, negative, num_neg)
    loss_cls = (pos_sum + neg_sum) / avg_factor
    reg = smooth_l1(box_deltas.astype(acc) - targets.box_targets.astype(acc), beta)
    loss_bbox = jnp.sum(jnp.where(positive[..., None], reg, 0.0), axis=(-2, -1)) / (
        avg_factor + _EPS
    )
    return loss_cls, loss_bbox


def flatten_levels(per_level: list[jax.Array], last_dim: int) -> jax.Array:
    """[N, H, W, A·K] per level → [N, Σ H·W·A, K] in anchor order (y, x, a)."""
    n = per_level[0].shape[0]
    return jnp.concatenate([x.reshape(n, -1, last_dim) for x in per_level], axis=1)
