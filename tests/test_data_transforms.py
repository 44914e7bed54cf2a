"""Property tests of the SSD train augmentations (ssd_jax.data.transforms)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax.config import load_config
from ssd_jax.data import transforms as T

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"
MEAN = (123.675, 116.28, 103.53)
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def image_and_boxes(draw, min_side: int = 8, max_side: int = 96, max_boxes: int = 8):
    """uint8 (h, w, 3) image and float32 (n, 4) boxes inside it with w, h >= 1 px."""
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    n = draw(st.integers(0, max_boxes))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w - 1))
        y1 = draw(st.floats(0, h - 1))
        x2 = draw(st.floats(x1 + 1, w))
        y2 = draw(st.floats(y1 + 1, h))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.random.default_rng(seed + 1)


def assert_inside(boxes: np.ndarray, image: np.ndarray) -> None:
    """0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H for every box."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = boxes.T
    assert np.all(x1 >= 0) and np.all(y1 >= 0), boxes
    assert np.all(x2 <= w) and np.all(y2 <= h), (boxes, image.shape)
    assert np.all(x1 < x2) and np.all(y1 < y2), boxes


@SETTINGS
@given(image_and_boxes())
def test_expand_keeps_every_box_and_places_the_image(case):
    image, boxes, rng = case
    out, out_boxes = T.expand(image, boxes, rng, mean=MEAN, ratio_range=(1.0, 4.0), prob=1.0)
    h, w = image.shape[:2]
    assert out.shape[0] >= h and out.shape[1] >= w and out.dtype == np.uint8
    assert out_boxes.shape == boxes.shape
    assert_inside(out_boxes, out)
    if len(boxes):
        shift = out_boxes[0, :2] - boxes[0, :2]
        left, top = int(round(shift[0])), int(round(shift[1]))
        np.testing.assert_allclose(out_boxes, boxes + [left, top, left, top], atol=1e-4)
        np.testing.assert_array_equal(out[top : top + h, left : left + w], image)


def test_expand_fills_the_canvas_with_the_truncated_mean_and_respects_prob():
    image = np.full((10, 12, 3), 7, np.uint8)
    boxes = np.array([[1, 1, 5, 5]], np.float32)
    rng = np.random.default_rng(0)
    out, _ = T.expand(image, boxes, rng, mean=MEAN, ratio_range=(4.0, 4.0), prob=1.0)
    assert out.shape == (40, 48, 3)
    background = out[(out != 7).any(-1)]
    np.testing.assert_array_equal(np.unique(background, axis=0), [[123, 116, 103]])
    same, same_boxes = T.expand(image, boxes, rng, mean=MEAN, prob=0.0)
    assert same is image and same_boxes is boxes


@SETTINGS
@given(image_and_boxes())
def test_crop_keeps_exactly_the_boxes_with_centres_inside(case):
    image, boxes, rng = case
    crop = T.min_iou_random_crop(
        image, boxes, rng, min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3
    )
    x1, y1, x2, y2 = crop.patch
    h, w = image.shape[:2]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    np.testing.assert_array_equal(crop.image, image[y1:y2, x1:x2])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (
        (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)
    )
    np.testing.assert_array_equal(crop.keep, inside)
    if len(boxes):
        assert crop.keep.any()
    expected = boxes[inside] - np.array([x1, y1, x1, y1], np.float32)
    expected[:, 0::2] = expected[:, 0::2].clip(0, x2 - x1)
    expected[:, 1::2] = expected[:, 1::2].clip(0, y2 - y1)
    np.testing.assert_allclose(crop.boxes, expected, atol=1e-4)
    assert_inside(crop.boxes, crop.image)


class _FixedModeRng:
    """A Generator stand-in whose ``integers`` always picks mode index ``mode``."""

    def __init__(self, mode: int, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._mode = mode

    def integers(self, n: int) -> int:
        assert 0 <= self._mode < n
        return self._mode

    def __getattr__(self, name):
        return getattr(self._rng, name)


def test_crop_modes_are_keep_then_min_ious_then_any():
    """mmdet's sample_mode (1, *min_ious, 0): index 0 keeps, index 1 = 0.9 bounds the IoU."""
    image = np.zeros((80, 80, 3), np.uint8)
    boxes = np.array([[2, 2, 78, 78]], np.float32)
    kept = T.min_iou_random_crop(image, boxes, _FixedModeRng(0, 0), min_ious=(0.9,))
    assert kept.image is image and kept.patch == (0, 0, 80, 80)
    for seed in range(10):
        crop = T.min_iou_random_crop(
            image, boxes, _FixedModeRng(1, seed), min_ious=(0.9,), min_crop_size=0.3
        )
        assert T._iou_with_patch(crop.patch, boxes)[0] >= 0.9
    ious = [
        T._iou_with_patch(
            T.min_iou_random_crop(image, boxes, _FixedModeRng(2, seed), min_ious=(0.9,)).patch,
            boxes,
        )[0]
        for seed in range(10)
    ]
    assert min(ious) < 0.9  # mode 0: any overlap


class _CountingRng:
    """A Generator that counts the modes drawn (``integers`` calls) and draws them for real."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.modes = 0

    def integers(self, n: int) -> int:
        self.modes += 1
        return self._rng.integers(n)

    def __getattr__(self, name):
        return getattr(self._rng, name)


def test_crop_that_no_patch_can_serve_returns_the_image_when_mode_1_comes_up():
    """mmdetection draws modes until one serves, and mode 1 always does (the image as it is):
    its only box centred on the left border is never strictly inside a patch, so every other
    mode fails. Measured in mmdetection 3.3.0 on the same 8 × 8 case: 2,000 of 2,000 calls
    returned, after 7.02 modes on average (at most 48); geometric with p = 1/7: mean 7."""
    image = np.zeros((8, 8, 3), np.uint8)
    boxes = np.array([[-4, 0, 4, 8]], np.float32)
    modes = []
    for seed in range(300):
        rng = _CountingRng(seed)
        crop = T.min_iou_random_crop(image, boxes, rng)
        assert crop.image is image and crop.patch == (0, 0, 8, 8) and crop.keep.all()
        modes.append(rng.modes)
    assert 6.0 < np.mean(modes) < 8.2  # 7 ± 3 standard errors (sd √42 ≈ 6.5, n = 300)


class _ModeSequenceRng(_CountingRng):
    """Draws the mode indices ``first`` ``times`` times, then ``then``; the rest for real."""

    def __init__(self, seed: int, first: int, times: int, then: int) -> None:
        super().__init__(seed)
        self._first, self._times, self._then = first, times, then

    def integers(self, n: int) -> int:
        self.modes += 1
        return self._first if self.modes <= self._times else self._then


def test_crop_draws_modes_without_a_cap():
    """No limit on the modes drawn, as in mmdetection: after 150 modes of 0.9 (which a 20 px box
    in an 80 px image never reaches: IoU <= 400 / 24² = 0.69) mode 0 still crops."""
    image = np.zeros((80, 80, 3), np.uint8)
    boxes = np.array([[30, 30, 50, 50]], np.float32)
    rng = _ModeSequenceRng(0, first=5, times=150, then=6)  # modes (1, .1, .3, .5, .7, .9, 0)
    crop = T.min_iou_random_crop(image, boxes, rng)
    assert rng.modes == 151 and crop.patch != (0, 0, 80, 80) and crop.keep.all()


@SETTINGS
@given(image_and_boxes(), st.integers(16, 320))
def test_resize_scales_boxes_into_the_square(case, size):
    image, boxes, _ = case
    out, out_boxes = T.resize(image, boxes, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    h, w = image.shape[:2]
    np.testing.assert_allclose(
        out_boxes, boxes * [size / w, size / h, size / w, size / h], rtol=1e-5, atol=1e-4
    )
    assert_inside(out_boxes, out)


@SETTINGS
@given(image_and_boxes())
def test_flip_drops_nothing_and_twice_is_the_identity(case):
    image, boxes, rng = case
    flipped, flipped_boxes = T.flip_horizontal(image, boxes)
    assert flipped_boxes.shape == boxes.shape
    assert_inside(flipped_boxes, flipped)
    np.testing.assert_array_equal(flipped[:, ::-1], image)
    back, back_boxes = T.flip_horizontal(flipped, flipped_boxes)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(back_boxes, boxes, atol=1e-4)
    out, out_boxes = T.random_flip(image, boxes, rng, prob=0.5)
    assert out_boxes.shape == boxes.shape
    assert_inside(out_boxes, out)


def test_photometric_distortion_keeps_gray_gray_and_stays_in_range():
    """Saturation 0 makes hue and saturation no-ops, and any channel order keeps R = G = B."""
    rng = np.random.default_rng(0)
    gray = np.repeat(np.arange(0, 256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    for _ in range(30):
        out = T.photometric_distortion(gray, rng)
        assert out.dtype == np.float32 and out.shape == gray.shape
        np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)
        np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)
        assert out.min() >= -32 * 1.5 - 1e-3 and out.max() <= 287 * 1.5 + 1e-3


def test_photometric_distortion_changes_colour_images_on_average():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    changed = [np.abs(T.photometric_distortion(image, rng) - image).max() > 1 for _ in range(400)]
    # unchanged only when every step is off (1/64) or only the identity permutation is drawn
    assert 0.95 <= np.mean(changed) <= 0.995


PHOTOMETRIC = np.load(REPO / "tests" / "data" / "photometric_reference.npz")


@pytest.mark.parametrize("k", range(len(PHOTOMETRIC["cases"])))
def test_photometric_distortion_equals_mmdetection(k):
    """mmdetection 3.3.0's PhotoMetricDistortion on the same choices (scripts/
    make_photometric_reference.py): float32 out, saturation clipped to [0, 1] when the factor
    is above 1, hue wrapped, nothing else clipped (values below 0 and above 255 stay)."""
    mode, b, c, sat_on, hue_on, delta, alpha, sat, hue = PHOTOMETRIC["cases"][k]
    params = T.PhotometricParams(
        int(mode),
        bool(b),
        bool(c),
        bool(sat_on),
        bool(hue_on),
        False,
        delta,
        alpha,
        sat,
        hue,
        np.arange(3),
    )
    ours = T.apply_photometric(PHOTOMETRIC["image_rgb"], params)
    theirs = PHOTOMETRIC[f"out_{k}"]
    assert ours.dtype == np.float32 == theirs.dtype
    np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=1e-5)


def test_photometric_draws_in_mmdetections_order():
    """Six coin flips (mode first), then delta, alpha, saturation, hue and the permutation."""
    p = T.draw_photometric(np.random.default_rng(3))
    rng = np.random.default_rng(3)
    flags = rng.integers(2, size=6)
    assert (p.mode, p.brightness_on, p.contrast_on, p.saturation_on, p.hue_on, p.swap_on) == tuple(
        [int(flags[0])] + [bool(f) for f in flags[1:]]
    )
    assert p.delta == rng.uniform(-32, 32) and p.alpha == rng.uniform(0.5, 1.5)
    assert p.saturation == rng.uniform(0.5, 1.5) and p.hue == rng.uniform(-18, 18)
    np.testing.assert_array_equal(p.order, rng.permutation(3))


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@SETTINGS
@given(case=image_and_boxes(min_side=16))
def test_train_transform_boxes_stay_inside_the_square(cfg, case):
    image, boxes, rng = case
    labels = np.arange(len(boxes), dtype=np.int32)
    out = T.train_transform({"boxes": boxes, "labels": labels}, image, rng, cfg)
    size = cfg.input_size
    # float32: the photometric distortion's values go to the network unclipped (mmdetection)
    assert out["image"].shape == (size, size, 3) and out["image"].dtype == np.float32
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int32
    assert len(out["boxes"]) == len(out["labels"])
    assert set(out["labels"].tolist()) <= set(labels.tolist())
    if len(boxes):
        assert len(out["labels"]) >= 1  # the crop always keeps at least one centre
    assert_inside(out["boxes"], out["image"])


@SETTINGS
@given(case=image_and_boxes(min_side=16))
def test_train_transform_without_crop_and_photometric_is_resize_and_flip(cfg, case):
    image, boxes, rng = case
    light = load_config(
        CONFIG,
        [
            "augment.expand_ratio=(1.0, 1.0)",
            "augment.min_iou_crop=False",
            "augment.photometric=False",
        ],
    )
    labels = np.arange(len(boxes), dtype=np.int32)
    seed = int(rng.integers(2**31))
    out = T.train_transform(
        {"boxes": boxes, "labels": labels}, image, np.random.default_rng(seed), light
    )
    np.testing.assert_array_equal(out["labels"], labels)  # nothing dropped
    resized, resized_boxes = T.resize(image, boxes, light.input_size)
    flipped, flipped_boxes = T.flip_horizontal(resized, resized_boxes)
    if np.array_equal(out["image"], resized):
        np.testing.assert_allclose(out["boxes"], resized_boxes, atol=1e-4)
    else:  # the flip is the only random step left
        np.testing.assert_array_equal(out["image"], flipped)
        np.testing.assert_allclose(out["boxes"], flipped_boxes, atol=1e-4)


@pytest.mark.parametrize("kind", ["crowd", "difficult"])
def test_ignored_boxes_take_part_in_the_crop_and_never_reach_the_loss(cfg, kind, monkeypatch):
    """mmdetection's ignored instances (COCO crowd, VOC difficult) go through Expand and
    MinIoURandomCrop with the other boxes (IoU and centre tests) and are dropped at the end."""
    seen = []
    crop = T.min_iou_random_crop

    def spy(image, boxes, rng, **kw):
        result = crop(image, boxes, rng, **kw)
        seen.append((boxes.copy(), result.keep.copy()))
        return result

    monkeypatch.setattr(T, "min_iou_random_crop", spy)
    gt, ignored = np.array([[10, 10, 40, 40]], np.float32), np.array([[50, 5, 90, 60]], np.float32)
    if kind == "crowd":
        record = {"boxes": gt, "labels": np.array([2], np.int32), "crowd_boxes": ignored}
    else:
        record = {
            "boxes": np.concatenate([ignored, gt]),
            "labels": np.array([7, 2], np.int32),
            "difficult": np.array([True, False]),
        }
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for seed in range(20):
        out = T.train_transform(record, image, np.random.default_rng(seed), cfg)
        boxes, keep = seen[-1]
        assert len(boxes) == 2  # the crop saw both boxes
        assert out["labels"].tolist() == ([2] if keep[0] else [])  # only the gt box, if kept
        assert len(out["boxes"]) == len(out["labels"])
