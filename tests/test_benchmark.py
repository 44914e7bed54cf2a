"""ssd-jax-benchmark runs at whatever batch a user names: a config whose per-GPU group does not
fit the batch is timed with the nearest grouping that does, and the report says so."""

from __future__ import annotations

import json
import pathlib

from builders import SMALL_SSDLITE
from ssd_jax.cli import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_benchmark_runs_a_batch_that_the_per_gpu_group_does_not_fit(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["--config", str(REPO / "configs" / "ssdlite_shapes.py"), "--batch-size", "4"]
    argv += ["--iters", "1", "--skip-input", "--out", str(out)]
    argv += [f"--config.{o}" for o in SMALL_SSDLITE]  # a 32 px SSDLite: compiles in seconds
    # SSDLite's recipe: 8 GPUs × 24 images
    argv += ["--config.train.batch_size=192", "--config.train.per_gpu_batch=24"]
    assert benchmark.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["per_gpu_batch"]["config"] == 24
    assert report["per_gpu_batch"]["used"] == 4
    assert "does not fit" in report["per_gpu_batch"]["note"]
    assert "groups of 4 images" in capsys.readouterr().err
    assert report["train"]["images_per_s"] > 0
    assert report["peak_host_memory_mb"] > 0


def test_backend_comparison_times_onnxruntime_float32_and_int8(tmp_path):
    """``--backends onnxruntime,onnxruntime-int8``: both files exported and timed in one rotated
    run (the 32 px SSDLite, detection mode, batch 1), versions recorded."""
    from test_export import require

    require("onnx", "onnxruntime", "jax2onnx")
    out = tmp_path / "backends.json"
    argv = ["--config", str(REPO / "configs" / "ssdlite_shapes.py")]
    argv += ["--backends", "onnxruntime,onnxruntime-int8", "--batch-sizes", "1", "--rounds", "2"]
    argv += ["--modes", "detect", "--out", str(out)]
    argv += [f"--config.{o}" for o in SMALL_SSDLITE]
    assert benchmark.main(argv) == 0
    report = json.loads(out.read_text())
    times = report["results"]["batch_1_detect"]
    assert set(times) == {"onnxruntime", "onnxruntime-int8"}
    assert all(t["images_per_s_median"] > 0 for t in times.values())
    assert report["versions"]["onnxruntime"]
