"""The random SSD training pipeline draws from mmdetection's distributions.

``transforms.train_transform`` with the SSD300 config (Expand, MinIoURandomCrop, Resize to 300,
RandomFlip, PhotoMetricDistortion) runs DRAWS times on the 96 × 128 image and three boxes that
mmdetection 3.3.0's own ``train_pipeline`` ran on (``scripts/make_pipeline_distribution_
reference.py`` → ``tests/data/pipeline_distribution_reference.npz``; its docstring defines each
statistic). Spies that call the real functions record what each step did. PhotoMetricDistortion
then runs alone, with the settings ``train_transform`` passed it, on a gray-and-colour test image
(``pipeline_statistics``).

Each statistic is compared with mmdetection's by a two-sample test at ALPHA = 0.001: the
Kolmogorov–Smirnov test (conservative for the discrete ones: kept-box count, and the atoms at 1
of the expand ratio and crop area), Fisher's exact test for the flip rate. With the 15 tests of
``STATISTICS`` the chance that a correct pipeline fails any is at most 15 × 0.001 = 1.5 %
(Bonferroni); the draws are seeded, so the outcome is fixed. SSD512 and SSDLite configure the
same pipeline with another output size only. ``test_a_changed_probability_or_range_is_rejected``
shows that the tests see a changed probability or range.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
from scipy import stats

from pipeline_statistics import PHOTO_STATISTICS, photo_statistics
from ssd_jax.config import load_config
from ssd_jax.data import transforms as T

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"
REFERENCE = dict(np.load(REPO / "tests" / "data" / "pipeline_distribution_reference.npz"))
DRAWS = len(REFERENCE["flipped"])  # 2000
SEED = 1
ALPHA = 0.001
# Statistics are compared rounded to this many decimals: some have atoms (the contrast of an
# unchanged image is exactly 1), which the KS test would split on a one-ulp rounding difference.
DECIMALS = 5
GEOMETRY = ("expand_ratio", "crop_area", "crop_aspect", "kept_boxes", "box_w", "box_h", "box_cx")
STATISTICS = (*GEOMETRY, "flipped", *PHOTO_STATISTICS)


def draw_pipeline(
    cfg: Any, draws: int, *, expand_prob: float | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``train_transform`` ``draws`` times: the geometric statistics and the flips (the
    reference's names and units), and the settings it passed PhotoMetricDistortion ({} without
    ``cfg.augment.photometric``). ``expand_prob`` replaces Expand's probability (a deliberate
    mutation; None: as configured)."""
    image, boxes = REFERENCE["image"], REFERENCE["boxes"]
    size = cfg.input_size
    real_expand, real_crop = T.expand, T.min_iou_random_crop
    real_flip, real_photometric = T.flip_horizontal, T.photometric_distortion
    seen: dict[str, Any] = {"photometric": {}}

    def expand(image, boxes, rng, **kw):
        if expand_prob is not None:
            kw["prob"] = expand_prob
        out = real_expand(image, boxes, rng, **kw)
        seen["expand_ratio"] = out[0].shape[1] / image.shape[1]
        return out

    def crop(image, boxes, rng, **kw):
        result = real_crop(image, boxes, rng, **kw)
        (h1, w1), (h2, w2) = image.shape[:2], result.image.shape[:2]
        seen["crop_area"], seen["crop_aspect"] = h2 * w2 / (h1 * w1), h2 / w2
        return result

    def flip(image, boxes):
        seen["flipped"] = True
        return real_flip(image, boxes)

    def photometric(image, rng, **settings):
        seen["photometric"] = settings
        return real_photometric(image, rng, **settings)

    rows = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "expand", expand)
        mp.setattr(T, "min_iou_random_crop", crop)
        mp.setattr(T, "flip_horizontal", flip)
        mp.setattr(T, "photometric_distortion", photometric)
        for i in range(draws):
            seen["flipped"] = False
            record = {"boxes": boxes, "labels": np.arange(len(boxes), dtype=np.int32)}
            out = T.train_transform(record, image, np.random.default_rng([SEED, i]), cfg)
            assert out["image"].shape == (size, size, 3)
            b = out["boxes"]  # [K, 4], K >= 1: the crop keeps a box centre
            rows.append(
                {
                    **{k: seen[k] for k in ("expand_ratio", "crop_area", "crop_aspect")},
                    "kept_boxes": len(b),
                    "box_w": (b[0, 2] - b[0, 0]) / size,
                    "box_h": (b[0, 3] - b[0, 1]) / size,
                    "box_cx": (b[0, 0] + b[0, 2]) / 2 / size,
                    "flipped": seen["flipped"],
                }
            )
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}, seen["photometric"]


def draw_photometric(settings: dict[str, Any], draws: int) -> dict[str, np.ndarray]:
    """PhotoMetricDistortion with ``settings`` ``draws`` times on the reference's test image:
    ``pipeline_statistics.photo_statistics`` of each output."""
    photo, rng = REFERENCE["photo_image"], np.random.default_rng([SEED, draws])
    rows = [
        photo_statistics(T.photometric_distortion(photo, rng, **settings), photo)
        for _ in range(draws)
    ]
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def p_value(name: str, ours: np.ndarray) -> float:
    """Two-sample p-value of ours against mmdetection's draws of statistic ``name``."""
    theirs = REFERENCE[name]
    if name == "flipped":
        table = [[ours.sum(), len(ours) - ours.sum()], [theirs.sum(), len(theirs) - theirs.sum()]]
        return float(stats.fisher_exact(table).pvalue)
    # float64 on both sides before rounding: a float32 array rounds to other neighbours
    ours, theirs = (np.round(np.asarray(x, np.float64), DECIMALS) for x in (ours, theirs))
    return float(stats.ks_2samp(ours, theirs).pvalue)


@pytest.fixture(scope="module")
def ssd300():
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def ours(ssd300) -> dict[str, np.ndarray]:
    assert ssd300.input_size == int(REFERENCE["input_size"])
    geometry, settings = draw_pipeline(ssd300, DRAWS)
    return {**geometry, **draw_photometric(settings, DRAWS)}


@pytest.mark.parametrize("name", STATISTICS)
def test_statistic_matches_mmdetection(ours, name):
    p = p_value(name, ours[name])
    assert p >= ALPHA, (
        f"{name}: p = {p:.2g} < {ALPHA}; ours mean {ours[name].mean():.4f}, "
        f"mmdetection's {REFERENCE[name].mean():.4f}"
    )


# One probability or range changed from mmdetection's; the statistic named must reject it. To
# stay fast, the geometric ones leave PhotoMetricDistortion out (it changes no geometry) and draw
# half as many times (the tests see these changes even then), and the photometric ones take
# their settings from a few pipeline draws.
MUTATIONS = {
    "expand prob 0.3 (mmdet 0.5)": ({"expand_prob": 0.3}, [], "expand_ratio"),
    "flip prob 0.4 (mmdet 0.5)": ({}, ["augment.flip_prob=0.4"], "flipped"),
    "min_crop_size 0.5 (mmdet 0.3)": ({}, ["augment.min_crop_size=0.5"], "crop_area"),
    "brightness_delta 16 (mmdet 32)": ({}, ["augment.brightness_delta=16"], "photo_brightness"),
    "saturation_range (0.7, 1.3) (mmdet (0.5, 1.5))": (
        {},
        ["augment.saturation_range=(0.7, 1.3)"],
        "photo_saturation",
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_changed_probability_or_range_is_rejected(mutation):
    kwargs, overrides, statistic = MUTATIONS[mutation]
    if statistic.startswith("photo_"):
        _, settings = draw_pipeline(load_config(CONFIG, overrides), 3, **kwargs)
        mutated = draw_photometric(settings, DRAWS)
    else:
        cfg = load_config(CONFIG, [*overrides, "augment.photometric=False"])
        mutated, _ = draw_pipeline(cfg, DRAWS // 2, **kwargs)
    p = p_value(statistic, mutated[statistic])
    assert p < ALPHA, f"{mutation}: {statistic} p = {p:.2g}, not rejected at {ALPHA}"
