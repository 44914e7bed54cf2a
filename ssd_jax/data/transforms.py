"""mmdetection's SSD training augmentations in NumPy/OpenCV.

mmdetection's SSD ``train_pipeline`` (``configs/ssd/ssd300_coco.py``, mmdet 3.x), mirrored by
``train_transform``::

    Expand(mean, to_rgb=True, ratio_range=(1, 4))            # prob 0.5 (class default)
    MinIoURandomCrop(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3)
    Resize(scale=(300, 300), keep_ratio=False)               # cv2 bilinear, boxes clipped
    RandomFlip(prob=0.5)                                     # horizontal
    PhotoMetricDistortion(brightness_delta=32, contrast_range=(0.5, 1.5),
                          saturation_range=(0.5, 1.5), hue_delta=18)

Layouts: images are RGB (H, W, 3), uint8 unless stated; boxes are float32 (n, 4) xyxy in pixels
of the image they go with; labels are int32 (n,). Every random function takes an explicit
``np.random.Generator`` and draws in the same order as mmdetection draws from ``np.random`` (the
streams differ, so only the distributions match, not individual samples).

mmdetection decodes images as BGR and flips them to RGB in its data preprocessor; here they are
RGB throughout. This changes no result: the Expand canvas is filled with the mean in the image's
channel order, OpenCV's RGB↔HSV on RGB equals BGR↔HSV on BGR, and PhotoMetricDistortion's random
channel permutation is uniform over all six orders either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from ssd_jax.preprocess import resize_image

EXPAND_PROB = 0.5  # mmdet Expand(prob=0.5): the SSD configs keep the class default
CROP_TRIALS = 50  # mmdet MinIoURandomCrop: patches tried per sampled mode
_IOU_EPS = 1e-6  # mmdet bbox_overlaps: union floored at eps


class CropResult(NamedTuple):
    """Output of ``min_iou_random_crop``.

    image: (h', w', 3) crop of the input image (the input itself when not cropped).
    boxes: float32 (k, 4) kept boxes in crop pixels, clipped to the crop.
    keep: bool (n,) over the input boxes: True for those kept (centre strictly inside the patch).
    patch: (x1, y1, x2, y2) int pixels of the crop in the input image.
    """

    image: np.ndarray
    boxes: np.ndarray
    keep: np.ndarray
    patch: tuple[int, int, int, int]


def expand(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    *,
    mean: Sequence[float],
    ratio_range: Sequence[float] = (1.0, 4.0),
    prob: float = EXPAND_PROB,
) -> tuple[np.ndarray, np.ndarray]:
    """mmdet ``Expand``: with probability ``prob``, place the image on a larger mean-filled canvas.

    The canvas is (int(h·r), int(w·r), 3) with r ~ U(ratio_range), filled with ``mean`` (RGB,
    cast to the image dtype by truncation as ``np.full`` does: 123.675 → 123); the image goes
    at (left, top) = (int(U(0, w·r − w)), int(U(0, h·r − h))) and the boxes shift by it. No box
    is dropped or clipped.
    """
    if rng.uniform(0.0, 1.0) > prob:  # mmdet: `if self._random_prob() > self.prob: return`
        return image, boxes
    h, w, c = image.shape
    ratio = rng.uniform(*ratio_range)
    canvas = np.empty((int(h * ratio), int(w * ratio), c), image.dtype)
    canvas[...] = np.asarray(mean, np.float64).astype(image.dtype)
    left = int(rng.uniform(0.0, w * ratio - w))
    top = int(rng.uniform(0.0, h * ratio - h))
    canvas[top : top + h, left : left + w] = image
    shift = np.array([left, top, left, top], np.float32)
    return canvas, (boxes + shift).astype(np.float32)


def min_iou_random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    *,
    min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    min_crop_size: float = 0.3,
) -> CropResult:
    """mmdet ``MinIoURandomCrop``: a random patch overlapping every box by at least a random IoU.

    A mode is drawn uniformly from ``(1, *min_ious, 0)`` (mmdet's ``sample_mode``, including the
    trailing 0 = any overlap): 1 returns the input unchanged (boxes not clipped). Otherwise up to
    ``CROP_TRIALS`` patches are tried: w' ~ U(min_crop_size·w, w), h' ~ U(min_crop_size·h, h),
    rejected unless 0.5 ≤ h'/w' ≤ 2; offsets as ``_patch_offset``; integer patch
    (int(left), int(top), int(left + w'), int(top + h')), rejected if it has zero width or height.
    A patch is accepted when ``min(IoU(patch, boxes)) >= mode`` and at least one box centre lies
    strictly inside it (no box: any patch is accepted). Boxes whose centres are strictly inside are
    kept, shifted to the patch and clipped to it; the others are dropped. If all ``CROP_TRIALS``
    fail, a new mode is drawn, as in mmdetection: the loop ends at the latest when mode 1 comes
    up (probability 1/(len(min_ious) + 2) per mode), so an image that no patch can serve (e.g. its
    only box centred on the border) comes back unchanged after a geometric number of modes.
    """
    h, w = image.shape[:2]
    modes = (1.0, *map(float, min_ious), 0.0)
    while True:
        min_iou = modes[rng.integers(len(modes))]  # mmdet: random.choice(self.sample_mode)
        if min_iou == 1.0:
            return CropResult(image, boxes, np.ones(len(boxes), bool), (0, 0, w, h))
        for _ in range(CROP_TRIALS):
            patch = _sample_patch(h, w, min_crop_size, rng)
            if patch is None:
                continue
            keep = _centres_inside(boxes, patch)
            if len(boxes) and (_iou_with_patch(patch, boxes).min() < min_iou or not keep.any()):
                continue
            return _crop(image, boxes, keep, patch)


def _sample_patch(
    h: int, w: int, min_crop_size: float, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """One candidate patch (x1, y1, x2, y2) in int pixels, or None when mmdet would reject it."""
    new_w = rng.uniform(min_crop_size * w, w)
    new_h = rng.uniform(min_crop_size * h, h)
    if new_h / new_w < 0.5 or new_h / new_w > 2:
        return None
    left = _patch_offset(w - new_w, rng)
    top = _patch_offset(h - new_h, rng)
    patch = (int(left), int(top), int(left + new_w), int(top + new_h))
    if patch[2] == patch[0] or patch[3] == patch[1]:
        return None
    return patch


def _patch_offset(slack: float, rng: np.random.Generator) -> float:
    """The patch offset as mmdet draws it: ``np.random.uniform(slack)``, i.e. low=slack, high=1.0.

    mmdet writes ``random.uniform(w - new_w)`` (meaning U(0, w − new_w)), but NumPy reads the one
    argument as ``low`` with ``high=1.0`` and returns ``low + (high − low)·U[0, 1)``: an offset
    between 1 and the slack (never below 1 when the slack is ≥ 1). Mirrored as written; the patch
    still always lies inside the image.
    """
    return slack + (1.0 - slack) * rng.random()


def _iou_with_patch(patch: Sequence[int], boxes: np.ndarray) -> np.ndarray:
    """IoU (n,) of one xyxy patch with boxes (n, 4), as mmdet ``bbox_overlaps`` (mode 'iou')."""
    px1, py1, px2, py2 = (float(v) for v in patch)
    b = boxes.astype(np.float64)
    iw = np.clip(np.minimum(b[:, 2], px2) - np.maximum(b[:, 0], px1), 0.0, None)
    ih = np.clip(np.minimum(b[:, 3], py2) - np.maximum(b[:, 1], py1), 0.0, None)
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, _IOU_EPS)


def _centres_inside(boxes: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """bool (n,): box centre strictly inside the patch (mmdet ``is_center_of_bboxes_in_patch``)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > patch[0]) & (cy > patch[1]) & (cx < patch[2]) & (cy < patch[3])


def _crop(
    image: np.ndarray, boxes: np.ndarray, keep: np.ndarray, patch: tuple[int, int, int, int]
) -> CropResult:
    x1, y1, x2, y2 = patch
    kept = boxes[keep] - np.array([x1, y1, x1, y1], np.float32)
    kept[:, 0::2] = np.clip(kept[:, 0::2], 0, x2 - x1)
    kept[:, 1::2] = np.clip(kept[:, 1::2], 0, y2 - y1)
    return CropResult(image[y1:y2, x1:x2], kept.astype(np.float32), keep, patch)


def resize(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """mmdet ``Resize(scale=(size, size), keep_ratio=False)``: cv2 bilinear to (size, size, 3).

    Boxes are scaled by (size / w, size / h) and clipped to [0, size] (``clip_object_border``).
    """
    resized, scale = resize_image(image, size)
    scaled = boxes * np.tile(scale, 2)
    return resized, np.clip(scaled, 0, size).astype(np.float32)


def flip_horizontal(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left↔right: (x1, x2) ↦ (w − x2, w − x1) (mmdet ``HorizontalBoxes.flip_``)."""
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def random_flip(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """mmdet ``RandomFlip(prob)``, default direction: horizontal with probability ``prob``."""
    if rng.uniform(0.0, 1.0) < prob:
        return flip_horizontal(image, boxes)
    return image, boxes


class PhotometricParams(NamedTuple):
    """One draw of mmdetection's ``PhotoMetricDistortion._random_flags`` (same order)."""

    mode: int  # 1: contrast before the HSV steps, 0: after
    brightness_on: bool
    contrast_on: bool
    saturation_on: bool
    hue_on: bool
    swap_on: bool
    delta: float  # brightness, added
    alpha: float  # contrast, multiplied
    saturation: float  # S multiplied
    hue: float  # degrees added to H
    order: np.ndarray  # (3,) channel permutation


def draw_photometric(
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: float = 18,
) -> PhotometricParams:
    """The random choices of one distortion: six coin flips, then the values (mmdet's order)."""
    flags = rng.integers(2, size=6)
    return PhotometricParams(
        int(flags[0]),
        *map(bool, flags[1:]),
        rng.uniform(-brightness_delta, brightness_delta),
        rng.uniform(*contrast_range),
        rng.uniform(*saturation_range),
        rng.uniform(-hue_delta, hue_delta),
        rng.permutation(3),
    )


def apply_photometric(image: np.ndarray, p: PhotometricParams) -> np.ndarray:
    """mmdet 3.3.0 ``PhotoMetricDistortion.transform`` with the choices ``p``: uint8 (H, W, 3)
    → float32 (H, W, 3), not clipped.

    In this order: brightness (+delta); contrast (×alpha) here if ``mode == 1``; to HSV (OpenCV,
    float32: H in degrees, S in [0, 1]); saturation (S ×factor, clipped to [0, 1] when the factor
    is above 1); hue (H + hue, then −360 where > 360 and +360 where < 0); back to RGB; contrast
    here if ``mode == 0``; the channel permutation. Each step only if its flag is on. Values can
    leave [0, 255]; mmdetection feeds them to the network unclipped.
    """
    img = image.astype(np.float32)
    if p.brightness_on:
        img += np.float32(p.delta)
    if p.mode == 1 and p.contrast_on:
        img *= np.float32(p.alpha)
    img = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    if p.saturation_on:
        img[..., 1] *= np.float32(p.saturation)
        if p.saturation > 1:  # OpenCV's float HSV keeps S in [0, 1]; mmdet clips it there
            np.clip(img[..., 1], 0, 1, out=img[..., 1])
    if p.hue_on:
        h = img[..., 0]
        h += np.float32(p.hue)
        h[h > 360] -= 360
        h[h < 0] += 360
    img = cv2.cvtColor(img, cv2.COLOR_HSV2RGB)
    if p.mode == 0 and p.contrast_on:
        img *= np.float32(p.alpha)
    if p.swap_on:
        img = img[..., p.order]
    return img


def photometric_distortion(
    image: np.ndarray, rng: np.random.Generator, **ranges: Any
) -> np.ndarray:
    """mmdet ``PhotoMetricDistortion``: ``apply_photometric(image, draw_photometric(rng,
    **ranges))``. Image RGB here, BGR in mmdetection: OpenCV's RGB↔HSV on RGB equals BGR↔HSV on
    BGR, and the permutation is uniform over the six orders either way."""
    return apply_photometric(image, draw_photometric(rng, **ranges))


def train_transform(
    record: dict[str, Any], image: np.ndarray, rng: np.random.Generator, cfg: Any
) -> dict[str, np.ndarray]:
    """mmdetection's SSD train pipeline on one decoded image.

    Args:
      record: source record; uses "boxes" float32 (n, 4) xyxy pixels of ``image``, "labels"
        int32 (n,) and, when present, "difficult" bool (n,) and "crowd_boxes" float32 (m, 4)
        (both ignored instances).
      image: uint8 RGB (H, W, 3).
      rng: the example's generator.
      cfg: the model config; uses ``cfg.input_size`` (S), ``cfg.model.mean`` (RGB, the Expand
        fill) and ``cfg.augment`` (expand_ratio, min_iou_crop, min_ious, min_crop_size,
        flip_prob, photometric, brightness_delta, contrast_range, saturation_range,
        hue_delta). ``min_iou_crop`` / ``photometric`` False leave that step out (mmdetection's
        SSD pipelines have both).

    Returns:
      {"image": (S, S, 3) uint8, or float32 with ``photometric`` (the distorted values as
      mmdetection feeds them to the network: neither rounded nor clipped), "boxes": float32
      (k, 4) xyxy in [0, S], "labels": int32 (k,)}. Boxes are dropped only by the crop's centre
      rule; ignored (crowd, difficult) boxes are never returned.
    """
    aug = cfg.augment
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    labels = np.asarray(record["labels"], np.int32).reshape(-1)
    # mmdetection's ignored instances — COCO crowd boxes, VOC "difficult" ones — go through
    # every geometric step with the others, count in the crop's IoU and centre tests, and are
    # left out at the end (SSD's loss never uses them).
    difficult = np.asarray(record.get("difficult", np.zeros(len(labels), bool)), bool)
    crowd = np.asarray(record.get("crowd_boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    boxes, labels = np.concatenate([boxes[~difficult], boxes[difficult], crowd]), labels[~difficult]
    is_gt = np.arange(len(boxes)) < len(labels)
    image, boxes = expand(image, boxes, rng, mean=cfg.model.mean, ratio_range=aug.expand_ratio)
    if aug.min_iou_crop:
        crop = min_iou_random_crop(
            image, boxes, rng, min_ious=aug.min_ious, min_crop_size=aug.min_crop_size
        )
        image, boxes, is_gt = crop.image, crop.boxes, is_gt[crop.keep]
        labels = labels[crop.keep[: len(labels)]]
    image, boxes = resize(image, boxes, cfg.input_size)
    image, boxes = random_flip(image, boxes, rng, prob=aug.flip_prob)
    if aug.photometric:
        image = photometric_distortion(
            image,
            rng,
            brightness_delta=aug.brightness_delta,
            contrast_range=aug.contrast_range,
            saturation_range=aug.saturation_range,
            hue_delta=aug.hue_delta,
        )
    boxes = boxes[is_gt]
    return {"image": image, "boxes": boxes, "labels": labels}
