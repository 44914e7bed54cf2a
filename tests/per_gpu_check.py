"""Run in a subprocess with 2 forced CPU devices and 64-bit JAX: mmdetection's per-GPU training
semantics against a hand-computed reference. Prints JSON.

SSDLite (BatchNorm everywhere), a batch of 4 images of which the last has no ground truth (so no
positive anchor), float64 so that rounding cannot hide a semantic difference. For
``train.per_gpu_batch`` P the reference is computed group by group, each group of P images run
through the plain model on its own (BatchNorm over those images only, the loss divided by that
group's avg_factor), gradients averaged over groups (DDP), one SGD step. Compared with the pmapped
train step on 1 device (all groups on it) and on 2 devices (P=2: a group per device; P=4: a group
spanning both devices).
"""

import functools
import json
import os
import pathlib

assert "xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", "")
os.environ["JAX_ENABLE_X64"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from builders import SMALL_SSDLITE  # noqa: E402  (tests/ is this script's folder)
from ssd_jax import objective  # noqa: E402
from ssd_jax.config import load_config  # noqa: E402
from ssd_jax.models.assembly import config_anchors, init_variables, model_for  # noqa: E402
from ssd_jax.parallel import shard_batch  # noqa: E402
from ssd_jax.preprocess import normalize  # noqa: E402
from ssd_jax.training import optim  # noqa: E402
from ssd_jax.training.state import create_train_state  # noqa: E402
from ssd_jax.training.step import make_p_train_step  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def tree_max_diff(a, b) -> float:
    return max(
        jax.tree.leaves(
            jax.tree.map(
                lambda x, y: float(
                    np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()
                ),
                a,
                b,
            )
        ),
        default=0.0,
    )


def reference_step(config, state, tx, batch, anchors, per_gpu):
    """One SGD step of mmdetection's DDP with ``per_gpu`` images per GPU, group by group."""
    model = model_for(config)  # BatchNorm over each call's whole batch: one group per call
    images = normalize(batch["image"], config.model.mean, config.model.std, np.float64)
    n = images.shape[0]
    grads, stats, losses = [], [], []

    @jax.jit
    def group_grad(params, images, boxes, labels, valid):
        def loss_fn(params):
            out = objective.ssd_loss(
                model,
                {"params": params, "batch_stats": state.batch_stats},
                images,
                boxes,
                labels,
                valid,
                jnp.asarray(anchors),
                train=True,
                **objective.loss_settings(config),
            )
            return out.loss_cls.sum() + out.loss_bbox.sum(), out

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    for g in range(n // per_gpu):
        part = slice(g * per_gpu, (g + 1) * per_gpu)
        (loss, out), grad = group_grad(
            state.params,
            images[part],
            batch["boxes"][part].astype(np.float64),
            batch["labels"][part],
            batch["valid"][part],
        )
        grads.append(grad)
        stats.append(out.batch_stats)
        losses.append(float(loss))
    return (*average_and_update(tx, grads, stats, state), float(np.mean(losses)), losses)


@functools.partial(jax.jit, static_argnums=0)
def average_and_update(tx, grads, stats, state):
    """DDP's mean of the groups' gradients (and BatchNorm statistics), then one SGD update.
    Jitted: eagerly, each leaf's ops would compile on their own (some 300 small programs)."""
    mean = lambda trees: jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)  # noqa: E731
    updates, _ = tx.update(mean(grads), state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), mean(stats)


_STEPS: dict = {}


def pmapped_step(config, state, tx, batch, anchors, per_gpu, devices):
    n = batch["image"].shape[0]
    if (per_gpu, devices) not in _STEPS:
        config = config.copy_and_resolve_references()
        config.train.per_gpu_batch = per_gpu
        _STEPS[per_gpu, devices] = make_p_train_step(
            config, tx, anchors, n, devices=jax.local_devices()[:devices]
        )
    p_step = _STEPS[per_gpu, devices]
    rep = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x)[None], (devices,) + np.shape(x)), state
    )
    new, metrics = p_step(rep, shard_batch(batch, devices))
    new = jax.tree.map(np.asarray, new)  # on the host: no small per-leaf programs to compile
    replica_diff = tree_max_diff(
        jax.tree.map(lambda a: a[0], new), jax.tree.map(lambda a: a[-1], new)
    )
    host = jax.tree.map(lambda a: a[0], new)
    return host, float(np.asarray(metrics["loss"])[0]), replica_diff, metrics


def main() -> None:
    assert jax.config.jax_enable_x64
    # A small SSDLite (BatchNorm in backbone, neck and head) at 32 px: the semantics under test
    # do not depend on depth, and compiling float64 train steps is most of this check's time.
    config = load_config(
        REPO / "configs" / "ssdlite_shapes.py", [*SMALL_SSDLITE, "precision='fp64'"]
    )
    config.optimizer.lr, config.optimizer.base_batch_size = 0.2, 4
    config.schedule.warmup_iters = 0
    model = model_for(config)
    anchors = np.concatenate(config_anchors(config, model))
    tx = optim.sgd(config, optim.lr_schedule(config, 4, 10))
    state = create_train_state(init_variables(model, config.input_size, 0), tx, 0)
    rng = np.random.default_rng(0)
    n, m = 4, 3
    xy = rng.uniform(0, 20, (n, m, 2))
    wh = rng.uniform(4, 12, (n, m, 2))
    batch = {
        "image": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "labels": rng.integers(0, 4, (n, m)).astype(np.int32),
        "valid": np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], bool),
    }
    report = {"devices": jax.local_device_count()}
    reference = {p: reference_step(config, state, tx, batch, anchors, p) for p in (2, 4)}
    for per_gpu in (2, 4):
        params, stats, loss, group_losses = reference[per_gpu]
        row = {"reference_loss": loss, "group_losses": group_losses}
        for devices in (1, 2) if per_gpu == 2 else (2,):  # P=4 on 1 device: P=0's path
            new, step_loss, replicas, _ = pmapped_step(
                config, state, tx, batch, anchors, per_gpu, devices
            )
            row[f"d{devices}"] = {
                "params": tree_max_diff(new.params, params),
                "batch_stats": tree_max_diff(new.batch_stats, stats),
                "loss": abs(step_loss - loss) / loss,
                "replica_diff": replicas,
                "moved": tree_max_diff(new.params, state.params),
            }
        report[f"per_gpu_{per_gpu}"] = row
    # per_gpu_batch 0 (SyncBN, one avg_factor) is one group of the whole batch: the same as P=4.
    new0, _, _, _ = pmapped_step(config, state, tx, batch, anchors, 0, 2)
    report["per_gpu_0_vs_4"] = tree_max_diff(new0.params, reference[4][0])
    # Grouping matters: P=2 and P=4 give different steps.
    report["per_gpu_2_vs_4"] = tree_max_diff(reference[2][0], reference[4][0])
    # A non-finite loss skips the update and is counted. From a state after one good step (so
    # that momentum and BatchNorm statistics are not their initial values), with one class
    # logit's bias set to +inf (a BatchNorm bias would not do: ReLU6 clips inf to 6). Params
    # (that inf included), BatchNorm statistics and optimizer state must come back bit for bit,
    # no NaN in them.
    good, _, _, _ = pmapped_step(config, state, tx, batch, anchors, 2, 2)
    params = jax.tree.map(np.array, good.params)
    params["bbox_head"]["cls_convs_0_1"]["bias"][0] = np.inf
    bad = good.replace(params=params)
    after, _, _, metrics = pmapped_step(config, bad, tx, batch, anchors, 2, 2)

    def same(a, b):
        pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
        return all(np.array_equal(x, y) and not np.isnan(x).any() for x, y in pairs)

    report["nonfinite"] = {
        "finite": bool(np.asarray(metrics["finite"])[0]),
        "in_row": int(after.nonfinite_in_row),
        "total": int(after.nonfinite_total),
        "steps": int(after.step) - int(bad.step),
        "params_kept": same(after.params, bad.params),
        "batch_stats_kept": same(after.batch_stats, bad.batch_stats),
        "opt_state_kept": same(after.opt_state, bad.opt_state),
        # the state it kept is not a trivially unchanged one
        "good_step_moved_stats": tree_max_diff(good.batch_stats, state.batch_stats) > 0,
        "momentum_nonzero": any(np.abs(x).max() > 0 for x in jax.tree.leaves(bad.opt_state)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
