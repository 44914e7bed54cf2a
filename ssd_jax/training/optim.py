"""Learning-rate schedules and SGD as mmdetection trains SSD (torch.optim.SGD semantics)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import optax


def scaled_lr(config: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """The config's lr scaled linearly from its base batch to the actual global batch, unless
    ``optimizer.auto_scale_lr`` is False (mmdetection's default; its ``--auto-scale-lr`` turns
    the same rule on)."""
    o = config.optimizer
    if not o.get("auto_scale_lr", True):
        return o.lr
    return o.lr * global_batch_size / o.base_batch_size


def lr_schedule(
    config: ml_collections.ConfigDict, global_batch_size: int, steps_per_epoch: int
) -> optax.Schedule:
    """Step → lr: linear warm-up (iterations) × the epoch schedule (multi-step or cosine).

    An "epoch" is ``dataset_repeat`` passes over the data (mmdetection's RepeatDataset);
    ``steps_per_epoch`` counts steps of the repeated data. Epoch-based factors change at epoch
    boundaries only (mmdetection's ``by_epoch=True``).
    """
    s = config.schedule
    base = scaled_lr(config, global_batch_size)
    milestones = jnp.asarray(s.milestones or (1 << 30,))

    # mmengine LinearLR(start_factor, begin=0, end=warmup_iters, by_epoch=False) reaches 1 at
    # iteration end - begin - 1 (its total_iters).
    ramp = max(s.warmup_iters - 1, 1)
    dtype = jnp.float64 if config.get("precision", "fp32") == "fp64" else jnp.float32

    def schedule(step):
        step = jnp.asarray(step, dtype)
        warm = jnp.where(
            step < s.warmup_iters,
            s.warmup_start_factor + (1 - s.warmup_start_factor) * step / ramp,
            1.0,
        )
        epoch = jnp.floor(step / steps_per_epoch)
        if s.type == "multistep":
            factor = s.gamma ** jnp.sum(epoch >= milestones)
        elif s.type == "cosine":  # CosineAnnealingLR(T_max=epochs, eta_min=0)
            factor = 0.5 * (1 + jnp.cos(math.pi * jnp.minimum(epoch, s.epochs) / s.epochs))
        else:
            raise ValueError(f"unknown schedule type {s.type!r} (multistep or cosine)")
        return base * warm * factor

    return schedule


def sgd(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum, weight_decay): decay added to every parameter's gradient, then
    heavy-ball momentum ``buf = m·buf + g``, then ``p -= lr·buf``."""
    o = config.optimizer
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay),
        optax.trace(decay=o.momentum, nesterov=False),
        optax.scale_by_learning_rate(schedule),
    )
