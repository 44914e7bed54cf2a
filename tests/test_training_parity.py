"""Assignment, loss and gradient parity with mmdetection 3.3.0 (fixtures/README.md tolerances)."""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import objective
from ssd_jax.assigner import build_targets
from ssd_jax.porting.convert import torch_to_flax_name


def ground_truth(reference):
    return ([reference["gt_bboxes_0"], reference["gt_bboxes_1"]],
            [reference["gt_labels_0"], reference["gt_labels_1"]])


def test_assignment(detector, reference):
    anchors = jnp.asarray(detector.flat_anchors)
    cfg = objective.target_settings(detector.config)
    boxes, labels = ground_truth(reference)
    b, l, v = objective.pad_ground_truth(boxes, labels, max_boxes=8)  # padding must not matter
    for i in range(2):
        t = build_targets(anchors, b[i], l[i], v[i], **cfg)
        np.testing.assert_array_equal(np.asarray(t.labels), reference[f"assigned_labels_{i}"])
        assert np.abs(np.asarray(t.box_targets) - reference[f"bbox_targets_{i}"]).max() <= 1e-4


def test_losses(detector, reference, fixture_name):
    boxes, labels = ground_truth(reference)
    out = detector.loss(reference["inputs_nchw"].transpose(0, 2, 3, 1), boxes, labels, train=True)
    np.testing.assert_allclose(out["loss_bbox"], reference["loss_bbox_per_image"], rtol=1e-4)
    if fixture_name.startswith("ssdlite"):
        pytest.xfail("SSDLite's train-mode loss_cls is not determined to 1e-4 in float32: a 1-ulp "
                     "change of the input moves it by 1e-4 to 3e-3 (test below); ours is 5e-4 "
                     "from the fixture, our float64 value 4e-4")
    np.testing.assert_allclose(out["loss_cls"], reference["loss_cls_per_image"], rtol=1e-4)


@functools.lru_cache(maxsize=2)
def gradients(name: str):
    from conftest import load_detector, load_reference
    det, ref = load_detector(name), load_reference(name)
    boxes, labels = ground_truth(ref)
    b, l, v = objective.pad_ground_truth(boxes, labels)
    x = jnp.asarray(ref["inputs_nchw"].transpose(0, 2, 3, 1))
    loss_fn = functools.partial(objective.ssd_loss, det.model,
                                target_cfg=objective.target_settings(det.config), train=True)

    def total(params):
        out = loss_fn({"params": params, "batch_stats": det.variables["batch_stats"]}, x, b, l, v,
                      jnp.asarray(det.flat_anchors))
        return out.loss_cls.sum() + out.loss_bbox.sum()

    return jax.jit(jax.grad(total))(det.variables["params"])


# Backbone gradients whose float32 value is not stable to the tolerance (see the xfail reason).
ILL_CONDITIONED = {"backbone.features.0.weight", "backbone.conv1.conv.weight",
                   "backbone.layer6.0.linear_conv.conv.weight"}


@pytest.mark.parametrize("index", range(4))
def test_gradients(fixture_name, reference, index):
    from conftest import fixture_dir
    key = json.loads((fixture_dir(fixture_name) / "meta.json").read_text())["grad_keys"][index]
    theirs = reference[f"grad/{key}"]
    _, path = torch_to_flax_name(key, {key: theirs})
    ours = gradients(fixture_name)
    for part in path:
        ours = ours[part]
    ours = np.asarray(ours).transpose(3, 2, 0, 1)  # HWIO → OIHW
    assert ours.shape == theirs.shape
    if key in ILL_CONDITIONED:
        pytest.xfail(f"{key}: not determined to 1e-3·max in float32. SSDLite: a 1-ulp change of the "
                     "input moves these gradients by 3 % to 180 % of their max (the 1×1 levels' "
                     "train-mode BatchNorm over 2 values amplifies rounding ~1e5×, and ReLU6 gates "
                     "flip); SSD300's first conv: 1-ulp input changes move it by ≥ 2.4e-3·max, and "
                     "ours is 3.3e-3·max from the fixture. "
                     "scripts/fixture_conditioning.py measures it")
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()


def test_ssdlite_train_loss_is_not_determined_to_the_tolerance_in_float32(fixture_name, detector,
                                                                          reference):
    """Why the SSDLite loss/gradient xfails above are the fixture's conditioning, not semantics:
    rounding the input differently (relative 2^-23, one float32 ulp) moves the train-mode loss_cls
    by more than the 1e-4 tolerance, while the same change leaves SSD300 within it."""
    boxes, labels = ground_truth(reference)
    x = reference["inputs_nchw"].transpose(0, 2, 3, 1)
    base = detector.loss(x, boxes, labels, train=True)["loss_cls"]
    rng = np.random.default_rng(0)
    moves = []
    for _ in range(3):
        xp = (x * (1 + 2.0**-23 * rng.standard_normal(x.shape))).astype(np.float32)
        moved = detector.loss(xp, boxes, labels, train=True)["loss_cls"]
        moves.append(np.abs(np.asarray(moved) / np.asarray(base) - 1).max())
    if fixture_name.startswith("ssdlite"):
        assert max(moves) > 1e-4, moves
    else:
        assert max(moves) < 1e-5, moves
