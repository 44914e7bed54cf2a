"""Run in a subprocess with 2 forced CPU devices: one pmapped train step over 2 devices equals
one over 1 device on the same global batch (SSDLite, so SyncBN is exercised). Prints JSON."""
import json
import os
import sys

assert "xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax.config import load_config  # noqa: E402
from ssd_jax.detector import anchor_generator, featmap_sizes, init_variables  # noqa: E402
from ssd_jax.models import build_model  # noqa: E402
from ssd_jax.training import optim  # noqa: E402
from ssd_jax.training.state import create_train_state  # noqa: E402
from ssd_jax.training.step import make_p_train_step, shard_batch  # noqa: E402


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "configs", "ssdlite_shapes.py"))
    config.input_size = 96
    # Pinned here rather than taken from the default config's tuning: the step size below.
    config.optimizer.lr, config.optimizer.base_batch_size = 0.2, 16
    config.schedule.warmup_iters = 50
    gen = anchor_generator(config)
    model = build_model(config.model, gen.num_anchors, bn_axis_name="batch")
    plain = build_model(config.model, gen.num_anchors)
    anchors = np.concatenate(gen.grid_anchors(featmap_sizes(plain, config.input_size)))
    # The first step of a real run (warm-up lr). Larger steps amplify float32 rounding through
    # BatchNorm over the few values of the 1×1 maps, beyond 1e-5, in 1- and 2-device runs alike.
    tx = optim.sgd(config, optim.lr_schedule(config, 4, 10))
    state = create_train_state(init_variables(plain, config.input_size, 0), tx, 0)
    rng = np.random.default_rng(0)
    n, m = 4, 3
    xy = rng.uniform(0, 60, (n, m, 2))
    wh = rng.uniform(12, 36, (n, m, 2))
    batch = {"image": rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8),
             "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
             "labels": rng.integers(0, 4, (n, m)).astype(np.int32),
             "valid": np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)}
    out = {}
    for d in (1, 2):
        devices = jax.local_devices()[:d]
        p_step = make_p_train_step(model, tx, anchors, config, devices=devices)
        rep = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (d,) + np.shape(x)), state)
        new, metrics = p_step(rep, shard_batch(batch, d))
        out[d] = jax.tree.map(lambda a: np.asarray(a[0]), new)
        if d == 2:  # both devices hold the same new state
            diffs = jax.tree.leaves(jax.tree.map(lambda a: float(np.abs(np.asarray(a[0]) - np.asarray(a[1])).max()), new))
            out["replica_diff"] = max(diffs)
    # A non-finite loss skips the update and is counted.
    p_step = make_p_train_step(model, tx, anchors, config, devices=jax.local_devices()[:2])
    bad = state.replace(params=jax.tree.map(lambda a: np.full_like(a, np.nan), state.params))
    bad_rep = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (2,) + np.shape(x)), bad)
    after, bad_metrics = p_step(bad_rep, shard_batch(batch, 2))
    after = jax.tree.map(lambda a: np.asarray(a[0]), after)
    skipped = {"finite": bool(np.asarray(bad_metrics["finite"])[0]),
               "in_row": int(after.nonfinite_in_row), "total": int(after.nonfinite_total),
               "step": int(after.step),
               "opt_state_kept": all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
                   jax.tree.leaves(after.opt_state), jax.tree.leaves(bad.opt_state)))}
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), out[1].params, out[2].params)
    stats = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / (1 + np.abs(a).max())),
                         out[1].batch_stats, out[2].batch_stats)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), out[1].params, state.params)
    print(json.dumps({"params": max(jax.tree.leaves(diff)), "batch_stats": max(jax.tree.leaves(stats)),
                      "moved": max(jax.tree.leaves(moved)), "replica_diff": out["replica_diff"],
                      "devices": jax.local_device_count(), "nonfinite": skipped}))


if __name__ == "__main__":
    main()
