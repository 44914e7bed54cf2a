"""SSD512 parity with mmdetection 3.3.0: import, forward and detections.

The reference (tests/data/ssd512, from scripts/make_ssd512_reference.py) is mmdetection's
``ssd512_coco`` with ../shared/mmdet_reference/make_fixtures.py's random weights (seed 13). The
checkpoint is rebuilt from its recipe (tests/seeded_checkpoint.py), written as mmdetection
writes one, and imported through the public API, as the SSD300 and SSDLite fixtures are.
Tolerances are test_parity.py's (the fixtures README's).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from conftest import require
from test_parity import assert_close_rel, assert_detections_match

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "ssd512"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    require("torch")
    from seeded_checkpoint import write_checkpoint

    from ssd_jax import Detector

    recipe = json.loads((DATA / "recipe.json").read_text())
    path = write_checkpoint(recipe, tmp_path_factory.mktemp("ssd512") / "checkpoint.pth")
    return Detector.from_checkpoint(REPO / "configs" / "ssd512_coco.py", path)


def network_input(detector, reference) -> np.ndarray:
    """mmdetection's network input, NHWC: (resized - mean) / std in float32."""
    model = detector.config.model
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    return np.stack([(reference[f"resized_{i}"].astype(np.float32) - mean) / std for i in (0, 1)])


def at_positions(nhwc, positions: np.ndarray) -> np.ndarray:
    """(N, H, W, C) → (N, C, P), the reference's layout of sampled cells."""
    return np.asarray(nhwc)[:, positions[:, 0], positions[:, 1], :].transpose(0, 2, 1)


def test_anchors(detector, reference):
    ours = detector.anchors()
    assert len(ours) == 7
    for k, a in enumerate(ours):
        assert a.shape == reference[f"anchors_l{k}"].shape
        assert np.abs(a - reference[f"anchors_l{k}"]).max() <= 1e-4, k


def test_preprocessing(detector, reference):
    x, scales = detector.preprocess([reference["image_0"], reference["image_1"]])
    std = np.asarray(detector.config.model.std, np.float32)
    assert (np.abs(np.asarray(x) - network_input(detector, reference)) * std).max() <= 0.01
    for i in range(2):
        np.testing.assert_allclose(scales[i], reference[f"scale_factor_{i}"], rtol=1e-6)


def test_neck_features_and_head_outputs(detector, reference):
    x = network_input(detector, reference)
    feats = detector.features(x)
    cls_logits, box_deltas = detector.forward(x)
    assert len(feats) == len(cls_logits) == len(box_deltas) == 7
    for k in range(7):
        pos = reference[f"positions_l{k}"]
        assert cls_logits[k].shape[1:3] == feats[k].shape[1:3]
        for name, ours in (
            ("neck_feat", feats),
            ("cls_scores", cls_logits),
            ("bbox_preds", box_deltas),
        ):
            theirs = reference[f"{name}_l{k}"]
            assert_close_rel(at_positions(ours[k], pos), theirs, f"{name} level {k}")
    # the head's outputs are far from zero: a level left out of the import would show
    assert min(np.abs(reference[f"cls_scores_l{k}"]).max() for k in range(7)) > 1.0


def test_detections_from_raw_images(detector, reference):
    results = detector.predict([reference["image_0"], reference["image_1"]])
    for i, res in enumerate(results):
        assert np.all(np.diff(res["scores"]) <= 0), "not sorted by score"
        assert len(reference[f"det_scores_{i}"]) == 200
        assert_detections_match(
            res,
            reference[f"det_bboxes_{i}"],
            reference[f"det_scores_{i}"],
            reference[f"det_labels_{i}"],
            detector.config.test.max_per_img,
        )
