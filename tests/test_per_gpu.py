"""mmdetection's per-GPU training semantics: BatchNorm statistics and the loss's avg_factor per
group of ``train.per_gpu_batch`` images, gradients averaged over groups, whatever the device
count; and what an image without a positive anchor contributes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from conftest import load_detector, load_reference, subprocess_env
from ssd_jax import objective
from ssd_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_POSITIVE = json.loads((REPO / "tests" / "data" / "no_positive_reference.json").read_text())


@pytest.fixture(scope="module")
def per_gpu_report() -> dict:
    env = subprocess_env("--xla_force_host_platform_device_count=2", JAX_ENABLE_X64="1")
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "per_gpu_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("per_gpu, devices", [(2, 1), (2, 2), (4, 2)])
def test_train_step_equals_per_group_reference(per_gpu_report, per_gpu, devices):
    """float64: the pmapped step equals mmdetection's DDP step computed group by group (P=2 on
    1 device: two groups on it; on 2: a group per device; P=4 on 2: one group spanning both)."""
    assert per_gpu_report["devices"] == 2
    row = per_gpu_report[f"per_gpu_{per_gpu}"][f"d{devices}"]
    assert row["moved"] > 1e-3  # the step moved the parameters
    assert row["params"] <= 1e-10, row
    assert row["batch_stats"] <= 1e-10, row
    assert row["loss"] <= 1e-12, row
    assert row["replica_diff"] == 0.0


def test_grouping_changes_the_step(per_gpu_report):
    assert per_gpu_report["per_gpu_2_vs_4"] > 1e-6  # P is not a no-op
    assert per_gpu_report["per_gpu_0_vs_4"] <= 1e-10  # 0 = one group of the whole batch
    losses = per_gpu_report["per_gpu_2"]["group_losses"]
    assert losses[0] != losses[1]


def test_nonfinite_step_is_skipped(per_gpu_report):
    assert per_gpu_report["nonfinite"] == {
        "finite": False,
        "in_row": 1,
        "total": 1,
        "steps": 1,
        "params_kept": True,
        "batch_stats_kept": True,
        "opt_state_kept": True,
        "good_step_moved_stats": True,
        "momentum_nonzero": True,
    }


@pytest.mark.parametrize("case", ["image1_empty", "both_empty"])
def test_image_without_positive_anchor_matches_mmdetection(fixture_name, case):
    """An image without ground truth: loss 0, and it counts 1 in its GPU's avg_factor (so the
    other image's loss is divided by its positives + 1); float64, tolerance 1e-6 relative."""
    ref = load_reference(fixture_name)
    theirs = NO_POSITIVE[fixture_name][case]
    empty = {"image1_empty": (1,), "both_empty": (0, 1)}[case]
    boxes = [np.zeros((0, 4)) if i in empty else ref[f"gt_bboxes_{i}"] for i in range(2)]
    labels = [np.zeros((0,), int) if i in empty else ref[f"gt_labels_{i}"] for i in range(2)]
    with jax.enable_x64(True):
        det = load_detector(fixture_name, "fp64")
        ours = det.loss(ref["inputs_nchw"].transpose(0, 2, 3, 1), boxes, labels, train=True)
    for key in ("loss_cls", "loss_bbox"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-12, err_msg=key)


def test_avg_factor_counts_each_image_at_least_once():
    """mmdetection: avg_factor = Σ over a GPU's images of max(#positives, 1)."""
    num_pos = np.array([18, 0, 5, 7])
    np.testing.assert_array_equal(objective.group_positives(num_pos, 2), [19, 19, 12, 12])
    np.testing.assert_array_equal(objective.group_positives(num_pos, 0), [31] * 4)
    np.testing.assert_array_equal(objective.group_positives(np.zeros(2, int), 2), [2, 2])


@pytest.mark.parametrize(
    "per_gpu, local, devices, expect",
    [
        (0, 4, 2, (0, None)),
        (2, 4, 2, (2, None)),
        (4, 2, 2, (0, ((0, 1),))),
        (4, 1, 8, (0, ((0, 1, 2, 3), (4, 5, 6, 7)))),
        (8, 8, 1, (0, None)),  # one device, one group of its batch: per_gpu_batch 0's code
        (2, 8, 1, (2, None)),
    ],
)
def test_grouping(per_gpu, local, devices, expect):
    g = objective.grouping(per_gpu, local, devices, "batch")
    assert (g.group_size, g.axis_index_groups) == expect
    assert g.batch_stats.group_size == expect[0]


@pytest.mark.parametrize("per_gpu, local, devices", [(3, 4, 1), (4, 3, 2), (8, 2, 2)])
def test_grouping_refuses_what_does_not_fit(per_gpu, local, devices):
    with pytest.raises(ConfigError, match="per_gpu_batch"):
        objective.grouping(per_gpu, local, devices, "batch")


@pytest.mark.parametrize(
    "per_gpu, batch, devices, expect",
    [(24, 8, 1, 8), (24, 48, 2, 24), (24, 16, 2, 16), (3, 8, 1, 4), (6, 8, 1, 8), (0, 8, 1, 0)],
)
def test_fitting_per_gpu_batch_is_the_nearest_grouping_that_fits(per_gpu, batch, devices, expect):
    # ssd-jax-benchmark times SSDLite's recipe (24 images per "GPU") at any batch this way
    assert objective.fitting_per_gpu_batch(per_gpu, batch, devices) == expect


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    per_gpu=st.integers(1, 64), local=st.integers(1, 32), devices=st.sampled_from([1, 2, 4, 8])
)
def test_fitting_per_gpu_batch_always_fits_and_keeps_what_fits(per_gpu, local, devices):
    fitted = objective.fitting_per_gpu_batch(per_gpu, local * devices, devices)
    objective.grouping(fitted, local, devices, "batch")  # accepted
    try:
        objective.grouping(per_gpu, local, devices, "batch")
    except ConfigError:
        return
    assert fitted == per_gpu
