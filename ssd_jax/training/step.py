"""The data-parallel train step (``jax.pmap`` over local devices, axis ``parallel.AXIS``)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssd_jax import objective
from ssd_jax.models import SSD
from ssd_jax.models.assembly import input_dtype, model_for
from ssd_jax.parallel import AXIS
from ssd_jax.preprocess import normalize
from ssd_jax.training.state import TrainState


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: SSD,
    tx: optax.GradientTransformation,
    anchors: jax.Array,
    config: ml_collections.ConfigDict,
    grouping: objective.Grouping,
    num_groups: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's shard of the global batch (call under pmap).

    The objective is mmdetection's under DDP: the mean over the ``num_groups`` "GPUs" of each
    one's loss (its images' losses divided by its positives); each device differentiates its
    share and the gradients are summed over devices. BatchNorm statistics are grouped as
    ``grouping`` says. A non-finite loss or gradient skips the update and is counted.
    """
    images = normalize(batch["image"], config.model.mean, config.model.std, input_dtype(config))
    boxes = batch["boxes"].astype(images.dtype)

    def loss_fn(params):
        out = objective.ssd_loss(
            model,
            {"params": params, "batch_stats": state.batch_stats},
            images,
            boxes,
            batch["labels"],
            batch["valid"],
            anchors,
            train=True,
            **objective.loss_settings(config),
            group_size=grouping.group_size,
            axis_name=AXIS,
            axis_index_groups=grouping.axis_index_groups,
        )
        return (out.loss_cls.sum() + out.loss_bbox.sum()) / num_groups, out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, AXIS)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    global_loss = jax.lax.psum(loss, AXIS)
    finite = jnp.isfinite(global_loss) & jnp.isfinite(optax.global_norm(grads))
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        batch_stats=keep(out.batch_stats, state.batch_stats),
        opt_state=keep(new_opt_state, state.opt_state),
        nonfinite_in_row=jnp.where(finite, 0, state.nonfinite_in_row + 1),
        nonfinite_longest=jnp.maximum(
            state.nonfinite_longest, jnp.where(finite, 0, state.nonfinite_in_row + 1)
        ),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    metrics = {
        "loss": global_loss,  # mean over groups of each group's summed per-image losses
        "loss_cls": jax.lax.psum(out.loss_cls.sum(), AXIS) / num_groups,
        "loss_bbox": jax.lax.psum(out.loss_bbox.sum(), AXIS) / num_groups,
        "finite": finite,
    }
    return new_state, metrics


def make_p_train_step(
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    anchors: Any,
    global_batch: int,
    devices: list | None = None,
):
    """The pmapped step of ``config`` over ``devices`` (default: all local devices of every
    process) for a global batch of ``global_batch`` images; the state's buffers are donated.

    Groups images into "GPUs" of ``config.train.per_gpu_batch`` (see ``objective.grouping``).
    """
    num_devices = len(devices) * jax.process_count() if devices else jax.device_count()
    per_gpu = int(config.train.get("per_gpu_batch", 0))
    groups = objective.grouping(per_gpu, global_batch // num_devices, num_devices, AXIS)
    model = model_for(config, groups.batch_stats)
    fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        anchors=jnp.asarray(anchors),
        config=config,
        grouping=groups,
        num_groups=global_batch // per_gpu if per_gpu else 1,
    )
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)
