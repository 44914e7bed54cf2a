"""Configs: bundled configs valid, overrides, out-of-range values and unknown keys refused naming
the key (with the nearest valid keys)."""

from __future__ import annotations

import pathlib

import pytest

from ssd_jax.config import check_batch_divisible, load_config, validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"


# ---- 2. Bad configs ----


@pytest.mark.parametrize(
    "typo, nearest",
    [
        ("train.bach_size=3", "train.batch_size"),
        ("lerning_rate=0.1", "optimizer.lr"),
        ("optimizer.learning_rate=0.1", "optimizer.lr"),
        ("epochs=3", "schedule.epochs"),
        ("test.score_threshold=0.1", "test.score_thr"),
    ],
)
def test_unknown_keys_are_refused_with_the_nearest_valid_key(typo, nearest):
    from ssd_jax.errors import UnknownConfigKeyError

    with pytest.raises(UnknownConfigKeyError, match=rf"did you mean {nearest.replace('.', '[.]')}"):
        load_config(CONFIG, [typo])


def test_overrides_parse_literals_and_strings():
    c = load_config(
        "ssd300_coco", ["train.batch_size=32", "data.img_dir=/x/y", "--config.test.score_thr=0.05"]
    )
    assert (c.train.batch_size, c.data.img_dir, c.test.score_thr) == (32, "/x/y", 0.05)


def test_a_bundled_config_loads_by_name_and_a_missing_one_names_the_choices():
    from ssd_jax.errors import InputFileError

    assert load_config("ssdlite_mobilenetv2_320_coco").input_size == 320
    with pytest.raises(InputFileError, match="bundled configs: .*ssd300_coco"):
        load_config("ssd301_coco")


def test_per_gpu_batch_must_divide_the_batch():
    config = load_config("ssdlite_mobilenetv2_320_coco", ["train.batch_size=32"])
    with pytest.raises(ValueError, match="batch_size=32 is not a multiple of .*per_gpu_batch=24"):
        validate_config(config)


@pytest.mark.parametrize(
    "name", ["ssd300_coco", "ssd512_coco", "ssdlite_mobilenetv2_320_coco", "ssdlite_shapes"]
)
def test_shipped_configs_are_valid(name):
    validate_config(load_config(REPO / "configs" / f"{name}.py"))


@pytest.mark.parametrize(
    "name, epochs, eval_every",
    [("ssd300_coco", 24, 1), ("ssd512_coco", 24, 1), ("ssdlite_mobilenetv2_320_coco", 120, 5)],
)
def test_epochs_and_validation_interval_are_mmdetections(name, epochs, eval_every):
    """mmdetection 3.3.0's train_cfg: SSD300/512 inherit schedule_2x's (max_epochs=24,
    val_interval=1); ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py sets max_epochs=120,
    val_interval=5 (its "600e" counts the 5 dataset repeats)."""
    config = load_config(REPO / "configs" / f"{name}.py")
    assert config.schedule.epochs == epochs
    assert config.train.eval_every_epochs == eval_every


@pytest.mark.parametrize(
    "key, value",
    [
        ("optimizer.lr", 0.0),
        ("optimizer.lr", -0.01),
        ("optimizer.lr", float("nan")),
        ("optimizer.weight_decay", -1e-4),
        ("optimizer.momentum", 1.0),
        ("optimizer.momentum", -0.1),
        ("train.batch_size", 0),
        ("train.batch_size", -8),
        ("test.score_thr", -0.1),
        ("test.score_thr", 1.5),
        ("test.nms_iou", 0.0),
        ("test.nms_iou", 1.01),
        ("input_size", 0),
        ("train.max_boxes", 0),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    config = load_config(CONFIG)
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
    with pytest.raises(ValueError, match=rf"{key.replace('.', r'[.]')}={value!r}"):
        validate_config(config)


def test_every_bad_value_is_listed_at_once():
    config = load_config(CONFIG, ["optimizer.lr=-1.0", "test.nms_iou=2.0"])
    with pytest.raises(ValueError, match=r"optimizer\.lr=-1\.0 must be > 0.*test\.nms_iou=2\.0"):
        validate_config(config)


def test_batch_not_divisible_by_devices_is_refused_with_valid_sizes():
    check_batch_divisible(64, 8)
    with pytest.raises(
        ValueError,
        match=r"batch_size=30 is not divisible by the 8 devices.*"
        r"24 or 32",
    ):
        check_batch_divisible(30, 8)
    with pytest.raises(ValueError, match="not divisible"):
        check_batch_divisible(0, 1)
