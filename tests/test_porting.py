"""mmdetection checkpoint import: orbax round trip, strict refusal, unsafe pickles, old layouts."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from flax import traverse_util

from conftest import (
    FIXTURE_CONFIGS,
    checkpoint_file,
    load_detector,
    load_reference,
    load_state_dict,
    require,
)
from ssd_jax import Detector
from ssd_jax.config import load_config
from ssd_jax.porting import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_checkpoint_variables,
)
from ssd_jax.porting.__main__ import main as porting_main

torch = require("torch")  # CI (SSD_JAX_REQUIRE_FIXTURES) fails without it
SSD300 = "ssd300_coco"


def ssd300_state_dict() -> dict[str, np.ndarray]:
    """A copy the caller may change (the arrays are shared: replace them, never write into them)."""
    return dict(load_state_dict(SSD300))


def save_pth(path, state_dict: dict, legacy: bool = False) -> str:
    obj = {
        "meta": {"mmdet_version": "2.13.0"},
        "state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
    }
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def assert_same_variables(a: dict, b: dict) -> None:
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_pth_to_orbax_round_trip(tmp_path):
    out = tmp_path / "orbax"
    assert (
        porting_main(
            [
                str(checkpoint_file(SSD300)),
                str(out),
                "--config",
                str(FIXTURE_CONFIGS[SSD300]),
            ]
        )
        == 0
    )
    det = Detector.from_checkpoint(FIXTURE_CONFIGS[SSD300], out)
    assert_same_variables(det.variables, load_detector(SSD300).variables)
    ref = load_reference(SSD300)
    cls, box = det.forward(ref["inputs_nchw"].transpose(0, 2, 3, 1))
    expected = ref["cls_scores_l2"].transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(cls[2]) - expected).max() <= 1e-3 * (1 + np.abs(expected).max())


def expected_shapes(config_path) -> dict:
    """The config's variable tree (zeros; nothing compiled)."""
    from ssd_jax.models.assembly import zero_variables

    return zero_variables(load_config(config_path))


def test_other_class_count_is_refused_naming_keys(tmp_path):
    sd = ssd300_state_dict()
    # A VOC-style head: 21 classes → A·21 channels instead of A·81.
    for k in [k for k in sd if k.startswith("bbox_head.cls_convs.")]:
        a = sd[k].shape[0] // 81
        sd[k] = sd[k][: a * 21]
    path = save_pth(tmp_path / "voc.pth", sd)
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint_variables(path, expected_shapes(FIXTURE_CONFIGS[SSD300]))
    msg = str(e.value)
    assert "voc.pth" in msg and "mis-shaped (12)" in msg
    assert "bbox_head.cls_convs.0.0.weight: checkpoint (3, 3, 512, 84)" in msg


def test_vgg_checkpoint_for_ssdlite_is_refused(tmp_path):
    path = save_pth(tmp_path / "vgg.pth", ssd300_state_dict())
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint_variables(
            path, expected_shapes(FIXTURE_CONFIGS["ssdlite_mobilenetv2_320_coco"])
        )
    msg = str(e.value)
    assert re.search(r"missing \(\d+\)", msg) and "backbone.conv1.conv.weight" in msg
    assert re.search(r"unexpected \(\d+\)", msg) and "backbone.features.0.weight" in msg


def test_a_mismatch_says_in_its_first_line_which_config_fits(tmp_path):
    """With the config, the refusal's first line names the bundled config the checkpoint fits
    (or, for the right network with another head, the class count it was trained for)."""
    path = save_pth(tmp_path / "vgg.pth", ssd300_state_dict())
    ssdlite = load_config(FIXTURE_CONFIGS["ssdlite_mobilenetv2_320_coco"])
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint_variables(
            path, expected_shapes(FIXTURE_CONFIGS["ssdlite_mobilenetv2_320_coco"]), config=ssdlite
        )
    first = str(e.value).splitlines()[0]
    assert "vgg.pth" in first and "it fits config ssd300_coco with 80 classes" in first
    sd = ssd300_state_dict()
    for k in [k for k in sd if k.startswith("bbox_head.cls_convs.")]:
        sd[k] = sd[k][: sd[k].shape[0] // 81 * 21]
    voc = save_pth(tmp_path / "voc.pth", sd)
    config = load_config(FIXTURE_CONFIGS[SSD300])
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint_variables(voc, expected_shapes(FIXTURE_CONFIGS[SSD300]), config=config)
    assert "it is a ssd300_coco trained for 20 classes, the config" in str(e.value).splitlines()[0]


def test_import_refuses_a_non_empty_output_folder(tmp_path):
    out = tmp_path / "orbax"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = [
        str(checkpoint_file(SSD300)),
        str(out),
        "--config",
        str(FIXTURE_CONFIGS[SSD300]),
    ]
    assert porting_main(args) == 2
    assert (out / "keep.txt").read_text() == "user data"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_that_would_run_code_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _RunsCode(marker)}},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*system"):
        load_checkpoint_variables(path, expected_shapes(FIXTURE_CONFIGS[SSD300]))
    assert not marker.exists()


def to_pre_v214(state_dict: dict) -> dict:
    """The inverse of mmdetection's tools/model_converters/upgrade_ssd_version.py."""
    out = {}
    for k, v in state_dict.items():
        if m := re.match(r"neck\.extra_layers\.(\d+)\.(\d+)\.conv\.(weight|bias)$", k):
            k = f"backbone.extra.{2 * int(m.group(1)) + int(m.group(2))}.{m.group(3)}"
        elif k == "neck.l2_norm.weight":
            k = "backbone.l2_norm.weight"
        elif m := re.match(r"bbox_head\.(cls|reg)_convs\.(\d+)\.0\.(weight|bias)$", k):
            k = f"bbox_head.{m.group(1)}_convs.{m.group(2)}.{m.group(3)}"
        out[k] = v
    return out


def test_pre_v214_layout_imports_to_the_same_model(tmp_path):
    old = to_pre_v214(ssd300_state_dict())
    assert "backbone.extra.7.weight" in old and "bbox_head.cls_convs.5.weight" in old
    path = save_pth(tmp_path / "old.pth", old, legacy=True)  # as that script saves
    det = Detector.from_checkpoint(FIXTURE_CONFIGS[SSD300], path)
    assert_same_variables(det.variables, load_detector(SSD300).variables)
