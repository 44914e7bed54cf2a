"""Properties of the box maths (hypothesis) not covered in test_models / test_data_transforms."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax.assigner import max_iou_assign
from ssd_jax.box_ops import pairwise_iou
from ssd_jax.config import load_config
from ssd_jax.data import transforms as T

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"
INPUT_SIZE = 64


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, [f"input_size={INPUT_SIZE}", "train.max_boxes=4"])


# ---- 4. Properties of the box maths not covered in test_models / test_data_transforms ----

NUM_ANCHORS, NUM_GTS = 24, 6


@st.composite
def boxes_in(draw, n: int, size: float = 100.0) -> np.ndarray:
    """float32 (n, 4) xyxy boxes with sides of at least 1 inside [0, size]²."""
    out = []
    for _ in range(n):
        x1, y1 = draw(st.floats(0, size - 2)), draw(st.floats(0, size - 2))
        out.append([x1, y1, draw(st.floats(x1 + 1, size)), draw(st.floats(y1 + 1, size))])
    return np.asarray(out, np.float32)


_assign = jax.jit(max_iou_assign, static_argnames=("gt_max_assign_all",))


@settings(max_examples=40, deadline=None)
@given(
    boxes_in(NUM_ANCHORS),
    boxes_in(NUM_GTS),
    st.lists(st.booleans(), min_size=NUM_GTS, max_size=NUM_GTS),
    st.booleans(),
)
def test_every_valid_ground_truth_gets_an_anchor_unless_a_later_one_takes_it(
    anchors, gts, valid, assign_all
):
    """min_pos_iou = 0 (SSD): each valid gt claims its best anchor(s), a later gt with the same
    best anchor overwriting (mmdetection's order). So a gt ends with no anchor only when every
    one of its best anchors went to a later gt; no invalid gt is ever assigned."""
    valid = np.asarray(valid)
    assigned = np.asarray(
        _assign(
            anchors,
            gts,
            valid,
            pos_iou_thr=0.5,
            neg_iou_thr=0.5,
            min_pos_iou=0.0,
            gt_max_assign_all=assign_all,
        )
    )
    assert assigned.min() >= -1 and assigned.max() <= NUM_GTS
    if not valid.any():
        assert (assigned == 0).all()
        return
    gt_of = assigned - 1
    assert set(gt_of[assigned > 0].tolist()) <= set(np.flatnonzero(valid).tolist())
    iou = np.asarray(pairwise_iou(gts, anchors))  # (M, A)
    best = [
        set(np.flatnonzero(iou[i] == iou[i].max())) if assign_all else {int(iou[i].argmax())}
        for i in range(NUM_GTS)
    ]
    for i in np.flatnonzero(valid):
        if (gt_of == i).any():
            continue
        later = set().union(*(best[j] for j in np.flatnonzero(valid) if j > i))
        assert best[i] <= later, (i, best, assigned)
    # and an anchor overlapping a valid gt by >= pos_iou_thr is never negative nor ignored
    strong = (np.where(valid[:, None], iou, -1.0) >= 0.5).any(axis=0)
    assert (assigned[strong] > 0).all()


@st.composite
def image_and_border_boxes(draw):
    """An image and boxes as CocoSource keeps them: w, h >= 1 and any overlap with the image,
    possibly reaching far past its borders (mmdetection does not clip them on load)."""
    h, w = draw(st.integers(16, 96)), draw(st.integers(16, 96))
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        x1 = draw(st.floats(-2.0 * w, w - 0.5))
        y1 = draw(st.floats(-2.0 * h, h - 0.5))
        x2 = draw(st.floats(max(x1 + 1, 0.5), 3.0 * w))
        y2 = draw(st.floats(max(y1 + 1, 0.5), 3.0 * h))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, np.asarray(boxes, np.float32), np.random.default_rng(seed + 1)


@settings(max_examples=60, deadline=None)
@given(image_and_border_boxes())
def test_boxes_crossing_the_border_end_inside_the_input_square(cfg, case):
    """tests/test_data_transforms.py draws boxes inside the image; CocoSource also keeps boxes
    that cross the border. A crop clips them to the patch, and the whole pipeline to [0, S]."""
    image, boxes, rng = case
    crop = T.min_iou_random_crop(image, boxes, np.random.default_rng(rng.integers(2**32)))
    if crop.image is not image:  # cropped (mode 1 returns the input as it is)
        h, w = crop.image.shape[:2]
        assert (crop.boxes >= 0).all() and (crop.boxes[:, 0::2] <= w).all()
        assert (crop.boxes[:, 1::2] <= h).all()
    out = T.train_transform(
        {"boxes": boxes, "labels": np.zeros(len(boxes), np.int32)}, image, rng, cfg
    )
    b, size = out["boxes"], cfg.input_size
    assert len(out["labels"]) >= 1 and len(b) == len(out["labels"])
    assert (b >= 0).all() and (b <= size).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
