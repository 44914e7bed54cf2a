"""Starting weights of a run: the ImageNet VGG16 backbone, or a full checkpoint to fine-tune."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
from flax import traverse_util

from conftest import FIXTURE_CONFIGS, REPO, load_state_dict, require
from ssd_jax.config import load_config
from ssd_jax.models.assembly import zero_variables
from ssd_jax.training.init import initial_variables

torch = require("torch")  # CI (SSD_JAX_REQUIRE_FIXTURES) fails without it


class Fresh:
    """``init`` of initial_variables: the model's tree as zeros (where nothing is loaded, the
    fresh value), counting the calls."""

    def __init__(self, config):
        self.variables, self.calls = zero_variables(config), 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.variables


def save(path, state_dict):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
    return str(path)


def test_vgg16_caffe_backbone(tmp_path):
    sd = load_state_dict("ssd300_coco")
    # open-mmlab://vgg16_caffe holds the backbone only, as features.N.*
    vgg = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    config = load_config(FIXTURE_CONFIGS["ssd300_coco"])
    config.train.pretrained_backbone = save(tmp_path / "vgg16_caffe.pth", vgg)
    out = traverse_util.flatten_dict(initial_variables(config, Fresh(config)))
    np.testing.assert_array_equal(
        out[("params", "backbone", "features_0", "kernel")],
        sd["backbone.features.0.weight"].transpose(2, 3, 1, 0),
    )
    assert not out[("params", "neck", "l2_norm", "weight")].any()  # untouched: fresh init


def test_fine_tune_with_other_classes_reinitialises_the_head(tmp_path, caplog):
    sd = load_state_dict("ssd300_coco")
    config = load_config(FIXTURE_CONFIGS["ssd300_coco"])
    config.model.num_classes = 20  # e.g. VOC
    config.train.load_from = save(tmp_path / "coco.pth", sd)
    fresh = Fresh(config)
    with caplog.at_level(logging.WARNING, logger="ssd_jax"):
        out = traverse_util.flatten_dict(initial_variables(config, fresh))
    assert "re-initialised" in caplog.text
    assert fresh.calls == 1
    np.testing.assert_array_equal(
        out[("params", "neck", "l2_norm", "weight")], sd["neck.l2_norm.weight"]
    )
    assert not out[("params", "bbox_head", "cls_convs_0_0", "kernel")].any()


def test_fine_tune_from_a_checkpoint_that_fits_runs_no_initialiser(tmp_path):
    """Every leaf comes from the file: the fresh init (and its compile, 16 s for SSDLite in
    float64) is never asked for."""
    sd = load_state_dict("ssd300_coco")
    config = load_config(FIXTURE_CONFIGS["ssd300_coco"])
    config.train.load_from = save(tmp_path / "coco.pth", sd)
    fresh = Fresh(config)
    out = traverse_util.flatten_dict(initial_variables(config, fresh))
    assert fresh.calls == 0
    assert len(out) == len(sd)
    np.testing.assert_array_equal(
        out[("params", "bbox_head", "cls_convs_0_0", "kernel")],
        sd["bbox_head.cls_convs.0.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        out[("params", "neck", "l2_norm", "weight")], sd["neck.l2_norm.weight"]
    )


def test_training_vgg_without_its_backbone_stops_at_once_with_one_line(tmp_path):
    """``train.py`` on SSD300 with no pretrained_backbone: exit 2 and one line naming the file,
    before the data is even read (the annotation file here does not exist; "not found" would
    mean the refusal came after the data, and the compile)."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(FIXTURE_CONFIGS["ssd300_coco"]),
            "--workdir",
            str(tmp_path / "work"),
            f"--config.data.ann_file={tmp_path / 'missing.json'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "vgg16_caffe-292e1171.pth" in lines[0]
    assert "--config.train.pretrained_backbone=none" in lines[0]
