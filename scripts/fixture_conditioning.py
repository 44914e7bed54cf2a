"""How well float32 determines a fixture's train-mode loss and gradients.

    python scripts/fixture_conditioning.py ssdlite_mobilenetv2_320_coco [--trials 25]

Recomputes the fixture's loss and its ``grad_keys`` gradients with the input rounded
differently (each value scaled by 1 + 2^-23·N(0, 1), about one float32 ulp; trial 0 is the
input as given) and prints, per trial, each gradient's max abs difference from the fixture
divided by the fixture's max (the README's tolerance is 1e-3) and loss_cls's relative
difference (tolerance 1e-4). When the trials scatter by more than the tolerance, no float32
implementation whose rounding differs from PyTorch's can be held to it.
Reads the fixtures from ``$SSD_JAX_FIXTURES`` (default ``../shared/fixtures``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("fixture", choices=("ssd300_coco", "ssdlite_mobilenetv2_320_coco"))
    p.add_argument("--trials", type=int, default=25)
    args = p.parse_args()
    os.environ.setdefault("SSD_JAX_FIXTURES", str(REPO.parent / "shared" / "fixtures"))

    import jax
    import jax.numpy as jnp
    import numpy as np

    from conftest import fixture_dir, load_detector, load_reference
    from ssd_jax import objective
    from ssd_jax.porting.convert import torch_to_flax_name

    det, ref = load_detector(args.fixture), load_reference(args.fixture)
    keys = json.loads((fixture_dir(args.fixture) / "meta.json").read_text())["grad_keys"]
    boxes, labels, valid = objective.pad_ground_truth(
        [ref["gt_bboxes_0"], ref["gt_bboxes_1"]], [ref["gt_labels_0"], ref["gt_labels_1"]])
    loss_fn = functools.partial(objective.ssd_loss, det.model,
                                target_cfg=objective.target_settings(det.config), train=True)
    anchors = jnp.asarray(det.flat_anchors)

    @jax.jit
    def gradients(params, x):
        def total(p):
            out = loss_fn({"params": p, "batch_stats": det.variables["batch_stats"]}, x, boxes,
                          labels, valid, anchors)
            return out.loss_cls.sum() + out.loss_bbox.sum(), out.loss_cls
        return jax.grad(total, has_aux=True)(params)

    def torch_layout(grads, key):
        _, path = torch_to_flax_name(key, {key: ref[f"grad/{key}"]})
        for part in path:
            grads = grads[part]
        g = np.asarray(grads)
        return g.transpose(3, 2, 0, 1) if g.ndim == 4 else g

    x = ref["inputs_nchw"].transpose(0, 2, 3, 1)
    rng = np.random.default_rng(0)
    print("trial  " + "  ".join(f"{key[-28:]:>28}" for key in keys) + "  loss_cls")
    for trial in range(args.trials):
        xp = x if trial == 0 else (x * (1 + 2.0**-23 * rng.standard_normal(x.shape))).astype(np.float32)
        grads, loss_cls = gradients(det.variables["params"], jnp.asarray(xp))
        errs = []
        for key in keys:
            theirs = ref[f"grad/{key}"]
            scale = np.abs(theirs).max()
            errs.append(np.abs(torch_layout(grads, key) - theirs).max() / scale if scale else 0.0)
        rel = np.abs(np.asarray(loss_cls) / ref["loss_cls_per_image"] - 1).max()
        print(f"{trial:5d}  " + "  ".join(f"{e:28.2e}" for e in errs) + f"  {rel:8.2e}", flush=True)


if __name__ == "__main__":
    main()
