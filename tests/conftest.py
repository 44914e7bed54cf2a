"""Shared test setup: fixture discovery and Detectors built once per session."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("SSD_JAX_FIXTURES", REPO.parent / "shared" / "fixtures"))
# .ci/run sets this so that absent fixtures fail the run instead of skipping.
REQUIRE_FIXTURES = os.environ.get("SSD_JAX_REQUIRE_FIXTURES", "") not in ("", "0")

FIXTURE_CONFIGS = {
    "ssd300_coco": REPO / "configs" / "ssd300_coco.py",
    "ssdlite_mobilenetv2_320_coco": REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py",
}


def fixture_dir(name: str) -> pathlib.Path:
    path = FIXTURES / name
    if not (path / "reference.npz").is_file():
        msg = f"mmdetection reference fixtures not found at {path} (set SSD_JAX_FIXTURES)"
        if REQUIRE_FIXTURES:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session", params=list(FIXTURE_CONFIGS))
def fixture_name(request) -> str:
    return request.param


_CACHE: dict = {}


def load_reference(name: str) -> dict[str, np.ndarray]:
    key = ("ref", name)
    if key not in _CACHE:
        with np.load(fixture_dir(name) / "reference.npz") as z:
            _CACHE[key] = {k: z[k] for k in z.files}
    return _CACHE[key]


def load_detector(name: str):
    """The fixture's checkpoint imported through the public API (cached per session)."""
    key = ("det", name)
    if key not in _CACHE:
        from ssd_jax import Detector
        _CACHE[key] = Detector.from_checkpoint(FIXTURE_CONFIGS[name],
                                               fixture_dir(name) / "checkpoint.pth.xz")
    return _CACHE[key]


@pytest.fixture(scope="session")
def reference(fixture_name):
    return load_reference(fixture_name)


@pytest.fixture(scope="session")
def detector(fixture_name):
    return load_detector(fixture_name)


def load_eval_detector(name: str):
    """The fixture Detector with the BatchNorm statistics the reference eval outputs were made with.

    The SSDLite fixture's checkpoint was saved after mmdetection's train-mode loss pass over the
    fixture batch (every ``num_batches_tracked`` is 1), while its eval-mode references (neck
    features, head outputs, detections) were computed before that pass. torch updated each
    running statistic once: ``post = (1 - 0.03)·pre + 0.03·batch`` (unbiased variance). We undo
    that single update using the batch statistics of the same pass, recomputed here in train
    mode from ``inputs_nchw``. Models without BatchNorm (SSD300) are returned unchanged.
    """
    key = ("eval_det", name)
    if key in _CACHE:
        return _CACHE[key]
    import jax.numpy as jnp
    from flax import traverse_util
    from ssd_jax import Detector
    from ssd_jax.porting import read_state_dict

    det = load_detector(name)
    if not det.variables["batch_stats"]:
        _CACHE[key] = det
        return det
    state_dict, _ = read_state_dict(fixture_dir(name) / "checkpoint.pth.xz")
    tracked = {int(v) for k, v in state_dict.items() if k.endswith("num_batches_tracked")}
    assert tracked == {1}, f"expected one recorded train step, found {tracked}"
    momentum = 0.03  # mmdetection SSDLite norm_cfg momentum
    x = jnp.asarray(load_reference(name)["inputs_nchw"].transpose(0, 2, 3, 1))
    _, state = det.model.apply(det.variables, x, train=True, mutable=["batch_stats", "intermediates"],
                               capture_intermediates=lambda m, _: type(m).__name__ in ("Conv", "PointwiseConv", "DepthwiseConv"))
    conv_out = traverse_util.flatten_dict(state["intermediates"])
    post = traverse_util.flatten_dict(det.variables["batch_stats"])
    pre = {}
    for path, value in post.items():
        y = np.asarray(conv_out[path[:-2] + ("conv", "__call__")][0], np.float64)
        y = y.reshape(-1, y.shape[-1])
        n = y.shape[0]
        batch = y.mean(0) if path[-1] == "mean" else y.var(0) * n / (n - 1)
        pre[path] = ((np.asarray(value, np.float64) - momentum * batch) / (1 - momentum)).astype(np.float32)
    variables = {"params": det.variables["params"], "batch_stats": traverse_util.unflatten_dict(pre)}
    _CACHE[key] = Detector(det.config, variables)
    return _CACHE[key]


@pytest.fixture(scope="session")
def eval_detector(fixture_name):
    return load_eval_detector(fixture_name)
