"""The data-parallel train step (``jax.pmap`` over local devices, axis ``'batch'``)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssd_jax import objective
from ssd_jax.models import SSD
from ssd_jax.training.state import TrainState

AXIS = "batch"


def normalize_on_device(images: jax.Array, mean, std) -> jax.Array:
    """uint8 RGB [B, S, S, 3] → float32 ``(x - mean) / std``."""
    return (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: SSD,
               tx: optax.GradientTransformation, anchors: jax.Array, config: ml_collections.ConfigDict
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's shard of the global batch (call under pmap).

    The loss is the sum over the global batch of per-image losses, each divided by the
    positives of the global batch (psum), so per-device gradients are summed (psum): the update
    equals one device's on the whole batch. BatchNorm statistics are averaged over devices when
    the model was built with ``bn_axis_name='batch'`` (SyncBN). A non-finite loss or gradient
    skips the update and is counted.
    """
    t = config.train
    images = normalize_on_device(batch["image"], config.model.mean, config.model.std)

    def loss_fn(params):
        out = objective.ssd_loss(
            model, {"params": params, "batch_stats": state.batch_stats}, images, batch["boxes"],
            batch["labels"], batch["valid"], anchors, train=True,
            target_cfg=objective.target_settings(config), neg_pos_ratio=t.neg_pos_ratio,
            smoothl1_beta=t.smoothl1_beta, axis_name=AXIS)
        return out.loss_cls.sum() + out.loss_bbox.sum(), out

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
        nonfinite_longest=jnp.maximum(state.nonfinite_longest,
                                      jnp.where(finite, 0, state.nonfinite_in_row + 1)),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics = {
        "loss": global_loss,
        "loss_cls": jax.lax.psum(out.loss_cls.sum(), AXIS),
        "loss_bbox": jax.lax.psum(out.loss_bbox.sum(), AXIS),
        "num_pos": out.num_pos,
        "finite": finite,
    }
    return new_state, metrics


def make_p_train_step(model: SSD, tx: optax.GradientTransformation, anchors: Any,
                      config: ml_collections.ConfigDict, devices: Optional[list] = None):
    """The pmapped step over ``devices`` (default: all local); the state's buffers are donated."""
    fn = functools.partial(train_step, model=model, tx=tx, anchors=jnp.asarray(anchors),
                           config=config)
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def replicate(tree: Any) -> Any:
    """Copies on every local device, with a leading device axis (pmap's replicated layout)."""
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), tree)
    return jax.pmap(lambda x: x, axis_name=AXIS)(stacked)  # laid out as the steps return it


def unreplicate(tree: Any) -> Any:
    """The first device's copy, on the host."""
    return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def shard_batch(batch: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """[B, ...] host arrays → [D, B/D, ...] for pmap."""
    def split(x):
        if x.shape[0] % num_devices:
            raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the "
                             f"{num_devices} local devices")
        return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
    return jax.tree.map(split, batch)
