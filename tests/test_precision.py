"""Mixed precision (bf16 compute, fp32 parameters, loss and NMS) against the fixtures.

Stated tolerance, looser than fp32's: of the reference's 20 best detections per image at least
18 have a bf16 detection of the same label with IoU ≥ 0.9 and a score within 0.01 (with random
weights, near-tied scores can reorder NMS); head outputs within 5e-2·(1 + max |ref|).
"""

from __future__ import annotations

import numpy as np

from conftest import FIXTURE_CONFIGS, fixture_dir, load_reference
from ssd_jax import Detector
from ssd_jax.config import load_config
from test_parity import box_iou

TOP, MIN_MATCHED = 20, 18


def test_bf16_ssd300_detections():
    ref = load_reference("ssd300_coco")
    config = load_config(FIXTURE_CONFIGS["ssd300_coco"], ["precision=bf16"])
    det = Detector.from_checkpoint(config, fixture_dir("ssd300_coco") / "checkpoint.pth.xz")
    assert {str(v.dtype) for v in __import__("jax").tree.leaves(det.variables)} == {"float32"}
    cls, _ = det.forward(ref["inputs_nchw"].transpose(0, 2, 3, 1))
    assert str(cls[0].dtype) == "bfloat16"
    theirs = ref["cls_scores_l0"].transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(cls[0], np.float32) - theirs).max() <= 5e-2 * (
        1 + np.abs(theirs).max()
    )
    results = det.predict([ref["image_0"], ref["image_1"]])
    for i, ours in enumerate(results):
        boxes, labels = ref[f"det_bboxes_{i}"][:TOP], ref[f"det_labels_{i}"][:TOP]
        scores = ref[f"det_scores_{i}"][:TOP]
        iou = box_iou(boxes, ours["boxes"])
        matched = [
            np.any(
                (ours["labels"] == labels[j])
                & (iou[j] >= 0.9)
                & (np.abs(ours["scores"] - scores[j]) <= 0.01)
            )
            for j in range(TOP)
        ]
        assert sum(matched) >= MIN_MATCHED, f"image {i}: {sum(matched)} of {TOP} matched"
