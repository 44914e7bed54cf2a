"""ssd-jax-benchmark runs at whatever batch a user names: a config whose per-GPU group does not
fit the batch is timed with the nearest grouping that does, and the report says so."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from builders import SMALL_SSDLITE
from conftest import subprocess_env
from ssd_jax import host_memory, provenance
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
    assert report["versions"]["jax"] and report["versions"]["jaxlib"]  # what the figures ran on
    assert report["cpu"]["flags"] == provenance.cpu_flags()  # AVX2 / AVX-512 / AMX tell apart


def test_backend_comparison_times_onnxruntime_float32_and_int8(tmp_path):
    """``--backends onnxruntime,onnxruntime-int8,openvino-int8``: the three files exported and
    timed in one rotated run (the 32 px SSDLite, detection mode, batch 1), versions recorded."""
    from test_export import require

    require("onnx", "onnxruntime", "openvino", "nncf", "jax2onnx")
    out = tmp_path / "backends.json"
    argv = ["--config", str(REPO / "configs" / "ssdlite_shapes.py")]
    backends = "onnxruntime,onnxruntime-int8,openvino-int8"
    argv += ["--backends", backends, "--batch-sizes", "1", "--rounds", "2"]
    argv += ["--modes", "detect", "--out", str(out)]
    argv += [f"--config.{o}" for o in SMALL_SSDLITE]
    assert benchmark.main(argv) == 0
    report = json.loads(out.read_text())
    times = report["results"]["batch_1_detect"]
    assert set(times) == {"onnxruntime", "onnxruntime-int8", "openvino-int8"}
    # which file each ran, as its metadata says
    assert report["quantization"] == {
        "onnxruntime": "none",
        "onnxruntime-int8": "int8",
        "openvino-int8": "int8-openvino",
    }
    assert all(t["images_per_s_median"] > 0 for t in times.values())
    assert report["versions"]["onnxruntime"]


def test_reference_onnx_is_timed_in_onnxruntime_and_openvino(tmp_path):
    """``--reference-onnx`` with OpenVINO named: the reference is timed in both runtimes; one
    that takes uint8 (as our exports do) gets the benchmark's images as they are, one that
    takes float32 NCHW gets them normalised and transposed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from test_export import require

    require("onnx", "onnxruntime", "openvino", "jax2onnx")
    s = 32  # SMALL_SSDLITE's input size

    def save(path, node, x_type, x_shape, y_shape, *initializers):
        graph = helper.make_graph(
            [node],
            path.stem,
            [helper.make_tensor_value_info("x", x_type, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            list(initializers),
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return str(path)

    # uint8 NHWC in, as float32 out
    cast = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)
    uint8_reference = save(tmp_path / "uint8.onnx", cast, TensorProto.UINT8, ["b", s, s, 3],
                           ["b", s, s, 3])  # fmt: skip
    # float32 NCHW in: a 1×1 convolution summing the channels
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    ones = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0, 1.0, 1.0])
    float_reference = save(tmp_path / "float.onnx", conv, TensorProto.FLOAT, ["b", 3, s, s],
                           ["b", 1, s, s], ones)  # fmt: skip

    out = tmp_path / "backends.json"
    argv = ["--config", str(REPO / "configs" / "ssdlite_shapes.py")]
    argv += ["--backends", "onnxruntime,openvino", "--batch-sizes", "1", "--rounds", "2"]
    argv += ["--modes", "raw", "--reference-onnx", uint8_reference, "--out", str(out)]
    argv += [f"--config.{o}" for o in SMALL_SSDLITE]
    assert benchmark.main(argv) == 0
    times = json.loads(out.read_text())["results"]["batch_1_raw"]
    expected = {"onnxruntime", "openvino", "onnxruntime-reference", "openvino-reference"}
    assert set(times) == expected
    assert all(t["images_per_s_median"] > 0 for t in times.values())

    images = np.random.default_rng(0).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    normalised = ((images - np.float32(127.5)) / np.float32(58.0)).transpose(0, 3, 1, 2)
    for name in ("onnxruntime", "openvino"):
        (got,) = as_list(benchmark._reference_runner(uint8_reference, name)(images, None))
        np.testing.assert_array_equal(got, images.astype(np.float32))
        (got,) = as_list(benchmark._reference_runner(float_reference, name)(images, None))
        np.testing.assert_allclose(got, normalised.sum(1, keepdims=True), rtol=1e-5, atol=1e-4)


def as_list(outputs) -> list:
    """ONNX Runtime's list or OpenVINO's dict of outputs, as a list."""
    return list(outputs.values()) if hasattr(outputs, "values") else list(outputs)


@pytest.mark.parametrize("huge_pages", ["", "0"], ids=["default", "SSD_JAX_HUGE_PAGES=0"])
def test_benchmark_as_a_program_runs_malloc_as_training_does(tmp_path, huge_pages):
    """Run as a program, the single-config benchmark restarts itself with malloc on huge pages
    as ssd-jax-train does (where the system has them), and its report says how malloc ran."""
    out = tmp_path / "b.json"
    args = ["--config", str(REPO / "configs" / "ssdlite_shapes.py"), "--batch-size", "1"]
    args += ["--iters", "1", "--skip-input", "--skip-train", "--out", str(out)]
    args += [f"--config.{o}" for o in SMALL_SSDLITE]
    env = subprocess_env(SSD_JAX_HUGE_PAGES=huge_pages)
    for name in host_memory.USER_SETTINGS:  # the user's malloc settings would stop the restart
        env.pop(name, None)
    code = "import sys; from ssd_jax.cli.benchmark import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    malloc = json.loads(out.read_text())["malloc"]
    if huge_pages != "0" and host_memory.huge_pages_possible():
        assert malloc == "transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
    else:
        assert malloc == "glibc's defaults"
