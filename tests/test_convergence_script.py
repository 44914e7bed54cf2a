"""scripts/convergence_vs_mmdet.py's own parts: the warm start handed to mmdetection is our
checkpoint exactly (keys, layout, BatchNorm statistics), and the claim's arithmetic."""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest

from conftest import checkpoint_file, require

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import convergence_vs_mmdet as conv  # noqa: E402


def test_checkpoint_to_state_dict_round_trips_mmdetections_weights(tmp_path):
    """mmdetection's SSDLite state dict → our orbax checkpoint → back: every tensor equal,
    convolutions back in OIHW, the same keys."""
    torch = require("torch")
    from flax import traverse_util

    from ssd_jax.checkpoints import save_variables
    from ssd_jax.porting import read_state_dict
    from ssd_jax.porting.convert import state_dict_to_flat

    pth = checkpoint_file("ssdlite_mobilenetv2_320_coco")
    theirs, _ = read_state_dict(pth)
    flat = {path: value for path, (_, value) in state_dict_to_flat(theirs).items()}
    save_variables(tmp_path / "checkpoints", traverse_util.unflatten_dict(flat), {"step": 0})
    out = tmp_path / "start.pth"
    conv.checkpoint_to_state_dict(tmp_path, pth, out)
    back = torch.load(out, map_location="cpu", weights_only=False)["state_dict"]
    assert set(back) == set(theirs)
    depthwise = 0
    for key, value in theirs.items():
        np.testing.assert_array_equal(back[key].numpy(), np.asarray(value), err_msg=key)
        depthwise += np.ndim(value) == 4 and np.shape(value)[1] == 1
    assert depthwise > 10  # the (C, 1, kh, kw) layout came back too


def test_verdict_is_the_issue_rule():
    ours, theirs = [0.20, 0.23, 0.22], [0.19, 0.23, 0.22]
    v = conv.verdict(ours, theirs)
    var = (np.var(ours, ddof=1) + np.var(theirs, ddof=1)) / 2  # equal sizes: the mean variance
    assert v["pooled_std"] == pytest.approx(math.sqrt(var))
    assert v["difference"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    assert v["threshold"] == pytest.approx(max(0.01, math.sqrt(var)))
    assert v["holds"]
    # a shift beyond the spread fails, even when it is under the pooled std of wider runs
    assert not conv.verdict([0.30, 0.301, 0.302], [0.28, 0.281, 0.282])["holds"]
    assert conv.verdict([0.30, 0.301, 0.302], [0.292, 0.293, 0.294])["holds"]  # 0.008 ≤ 0.01
