"""Exported models, loaded back by their runtimes, against mmdetection's references.

Formats × runtimes: ONNX (jax2onnx + ONNX NonMaxSuppression) run by ONNX Runtime and by
OpenVINO; ``jax.export`` artifacts run by JAX; TFLite files (jax2tf + TF's converter) run by
LiteRT. Tolerances are the fixtures README's. The
optional packages come from requirements-export.txt; under SSD_JAX_REQUIRE_FIXTURES=1 a
missing one fails instead of skipping. Each model is exported once per session (per worker).
"""

from __future__ import annotations

import collections
import importlib
import pathlib

import numpy as np
import pytest

from builders import SMALL_SSDLITE
from conftest import (
    FIXTURE_CONFIGS,
    REQUIRE_FIXTURES,
    load_detector,
    load_reference,
    load_state_dict,
)
from test_parity import assert_close_rel, assert_detections_match, nchw_to_nhwc

RUNTIME_FORMAT = {"onnxruntime": "onnx", "openvino": "onnx", "jax": "jax", "litert": "tflite"}
RUNTIME_PACKAGES = {
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino", "onnx"),
    "jax": (),
    "litert": ("ai_edge_litert",),
}
EXPORT_PACKAGES = {"onnx": ("jax2onnx", "onnx"), "jax": (), "tflite": ("tensorflow",)}
SUFFIX = {"onnx": ".onnx", "jax": ".jaxexport", "tflite": ".tflite"}


def require(*modules: str) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            msg = (
                f"{module} is not installed ({e}); pip install -r requirements-export.txt and "
                "--no-deps -r requirements-export-nodeps.txt"
            )
            if REQUIRE_FIXTURES:
                pytest.fail(msg)
            pytest.skip(msg)


_EXPORTED: dict = {}
_LOADED: dict = {}


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("exported")


def exported_file(export_dir: pathlib.Path, name: str, fmt: str, raw: bool) -> pathlib.Path:
    """Export the fixture's Detector once per session; the model file's path."""
    key = (name, fmt, raw)
    if key not in _EXPORTED:
        require(*EXPORT_PACKAGES[fmt])
        from ssd_jax.export import export

        path = export_dir / f"{name}_{'raw' if raw else 'detect'}{SUFFIX[fmt]}"
        written = export(load_detector(name), path, fmt, raw=raw)
        assert pathlib.Path(written["model"]) == path and path.is_file()
        _EXPORTED[key] = path
    return _EXPORTED[key]


def loaded_model(export_dir: pathlib.Path, name: str, runtime: str, raw: bool):
    key = (name, runtime, raw)
    if key not in _LOADED:
        require(*RUNTIME_PACKAGES[runtime])
        path = exported_file(export_dir, name, RUNTIME_FORMAT[runtime], raw)
        from ssd_jax.export import runtime as rt

        _LOADED[key] = rt.load(path, runtime)
    return _LOADED[key]


def uint8_inputs(name: str) -> np.ndarray:
    """The reference's network input as the uint8 image it was normalised from (N, S, S, 3).

    mmdetection resizes the uint8 images (cv2 bilinear → uint8), then normalises, so the
    input's pixels are integers on the 0–255 scale.
    """
    from ssd_jax.config import load_config

    ref = load_reference(name)
    cfg = load_config(FIXTURE_CONFIGS[name]).model
    x = nchw_to_nhwc(ref["inputs_nchw"]) * np.asarray(cfg.std, np.float32) + np.asarray(
        cfg.mean, np.float32
    )
    assert np.abs(x - np.round(x)).max() < 1e-3
    return np.round(x).astype(np.uint8)


def assert_raw_outputs_match(out: dict, name: str, num_classes: int, what: str) -> None:
    """cls_logits / bbox_deltas (N, A, ·) against the reference's per-level head outputs."""
    ref = load_reference(name)
    start = 0
    levels = sorted(k for k in ref if k.startswith("cls_scores_l"))
    for k in range(len(levels)):
        cls_ref = nchw_to_nhwc(ref[f"cls_scores_l{k}"])
        box_ref = nchw_to_nhwc(ref[f"bbox_preds_l{k}"])
        n, h, w, c = cls_ref.shape
        count = h * w * c // (num_classes + 1)
        assert_close_rel(
            out["cls_logits"][:, start : start + count].reshape(cls_ref.shape),
            cls_ref,
            f"{what} cls level {k}",
        )
        assert_close_rel(
            out["bbox_deltas"][:, start : start + count].reshape(box_ref.shape),
            box_ref,
            f"{what} reg level {k}",
        )
        start += count
    assert out["cls_logits"].shape[1] == out["bbox_deltas"].shape[1] == start


@pytest.mark.parametrize("runtime", [r for r in RUNTIME_FORMAT if r != "litert"])
def test_raw_outputs(export_dir, fixture_name, runtime):
    model = loaded_model(export_dir, fixture_name, runtime, raw=True)
    assert model.kind == "raw"
    assert_raw_outputs_match(
        model(images=uint8_inputs(fixture_name)), fixture_name, len(model.class_names), runtime
    )


def test_raw_outputs_litert(export_dir):
    """test_raw_outputs for LiteRT, on SSDLite only: converting SSD300 takes 40 s on 2 cores,
    and its network is checked in LiteRT through its detections (the test below)."""
    name = "ssdlite_mobilenetv2_320_coco"
    model = loaded_model(export_dir, name, "litert", raw=True)
    assert model.kind == "raw"
    assert_raw_outputs_match(model(images=uint8_inputs(name)), name, 80, "litert")


def test_onnx_graph_has_one_conv_per_convolution_as_torch_writes_it(export_dir, fixture_name):
    """Every convolution one ``Conv`` (BatchNorm folded into it, 1×1 and depthwise ones too) and
    ReLU6 one ``Clip``, as in mmdetection's ``torch.onnx`` graph: ONNX Runtime fuses these, and
    ran our SSDLite graph 3.3× slower before. mmdetection's SSDLite graph has 88 Conv."""
    import onnx

    path = exported_file(export_dir, fixture_name, "onnx", raw=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    state_dict = load_state_dict(fixture_name)
    convs = sum(1 for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 4)
    assert ops["Conv"] == convs, ops
    assert not {"BatchNormalization", "Einsum", "MatMul", "Sqrt", "Min"} & set(ops), ops
    if fixture_name.startswith("ssdlite"):
        assert ops["Clip"] == 59, ops  # every ReLU6
        assert ops["Add"] == 10, ops  # MobileNetV2's residuals; the biases are inside the Conv
    # the input's "/ std" is in the first kernel; SSD300 keeps L2Norm's division
    assert ops["Div"] == (0 if fixture_name.startswith("ssdlite") else 1), ops
    # NCHW throughout (onnx_layout): one Transpose of the uint8 input, and per level the class
    # and box maps' NCHW → (B, H·W·anchors, ·); OpenVINO ran the graph with a layout round trip
    # around every Conv at 0.37× (f32) / 0.20× (bf16) of mmdetection's.
    levels = len(load_detector(fixture_name).anchors())
    assert ops["Transpose"] == 1 + 2 * levels, ops
    # VGG's ceil-mode pools pad inside MaxPool, every ReLU is a Relu (mmdetection's graph has
    # 23), and the graph computes no shapes (OpenVINO ran these at 0.85-0.94× of mmdetection's)
    assert not {"Pad", "Max", "Shape", "Gather"} & set(ops), ops
    if not fixture_name.startswith("ssdlite"):
        assert ops["Relu"] == 23, ops


@pytest.mark.parametrize("fmt", ["onnx", "jax"])
def test_raw_export_writes_anchors(export_dir, fixture_name, fmt):
    from ssd_jax.export.onnx_export import anchors_path

    anchors = np.load(anchors_path(exported_file(export_dir, fixture_name, fmt, raw=True)))
    ref = load_reference(fixture_name)
    expected = np.concatenate([ref[k] for k in sorted(k for k in ref if k.startswith("anchors_l"))])
    assert anchors.shape == expected.shape
    assert np.abs(anchors - expected).max() <= 1e-4


@pytest.mark.parametrize("runtime", list(RUNTIME_FORMAT))
def test_detections_from_raw_images(export_dir, fixture_name, runtime):
    from ssd_jax.export.runtime import predict

    model = loaded_model(export_dir, fixture_name, runtime, raw=False)
    ref = load_reference(fixture_name)
    max_per_img = load_detector(fixture_name).config.test.max_per_img
    results = predict(model, [ref["image_0"], ref["image_1"]])
    for i, res in enumerate(results):
        assert np.all(np.diff(res["scores"]) <= 0), "not sorted by score"
        assert_detections_match(
            res, ref[f"det_bboxes_{i}"], ref[f"det_scores_{i}"], ref[f"det_labels_{i}"], max_per_img
        )


@pytest.mark.parametrize("runtime", list(RUNTIME_FORMAT))
def test_dynamic_batch(export_dir, runtime):
    """Batches of 1 and 3 (the export saw none of these sizes) give each image's detections."""
    from ssd_jax.export.runtime import predict

    name = "ssdlite_mobilenetv2_320_coco"  # the fast one
    model = loaded_model(export_dir, name, runtime, raw=False)
    ref = load_reference(name)
    images = [ref["image_1"], ref["image_0"], ref["image_1"]]
    for batch, which in (([images[0]], [1]), (images, [1, 0, 1])):
        results = predict(model, batch)
        assert len(results) == len(which)
        for res, i in zip(results, which):
            assert_detections_match(
                res, ref[f"det_bboxes_{i}"], ref[f"det_scores_{i}"], ref[f"det_labels_{i}"], 200
            )


def _nms_problem(seed: int = 0, batch: int = 3, k: int = 300, classes: int = 3):
    """Clustered random boxes (much overlap), some non-candidates (score -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 180, (batch, 12, 2))
    pick = rng.integers(0, 12, (batch, k))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (batch, k, 2))
    wh = rng.uniform(10, 40, (batch, k, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1).astype(np.float32)
    scores = rng.uniform(0.03, 1.0, (batch, k)).astype(np.float32)
    scores[rng.uniform(size=(batch, k)) < 0.2] = -1.0
    scores[2, :] = -1.0  # an image without candidates
    labels = rng.integers(0, classes, (batch, k)).astype(np.int32)
    return boxes, scores, labels


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_nms_is_greedy_class_aware_nms(tmp_path, runtime):
    """The ONNX NMS tail keeps what ``postprocess.batched_nms`` keeps, in the same order."""
    require("onnx", *RUNTIME_PACKAGES[runtime])
    import jax
    import onnx
    from onnx import TensorProto, helper

    from ssd_jax import postprocess
    from ssd_jax.export import onnx_nms
    from ssd_jax.export import runtime as rt

    boxes, scores, labels = _nms_problem()
    classes, max_out, iou = 3, 40, 0.45
    class_scores = np.where(
        labels[:, None, :] == np.arange(classes)[None, :, None], scores[:, None, :], -1.0
    ).astype(np.float32)
    k = boxes.shape[1]
    dtypes = {
        "cand_boxes": (TensorProto.FLOAT, ["B", k, 4]),
        "cand_scores": (TensorProto.FLOAT, ["B", k]),
        "cand_labels": (TensorProto.INT32, ["B", k]),
        "cand_class_scores": (TensorProto.FLOAT, ["B", classes, k]),
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", ["in_" + n], [n]) for n in onnx_nms.CANDIDATE_OUTPUTS],
        "nms",
        [helper.make_tensor_value_info("in_" + n, *dtypes[n]) for n in onnx_nms.CANDIDATE_OUTPUTS],
        [helper.make_tensor_value_info(n, *dtypes[n]) for n in onnx_nms.CANDIDATE_OUTPUTS],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx_nms.append_nms(model, num_candidates=k, nms_iou=iou, max_per_img=max_out)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "nms.onnx")
    out = rt.load(tmp_path / "nms.onnx", runtime)(
        in_cand_boxes=boxes,
        in_cand_scores=scores,
        in_cand_labels=labels,
        in_cand_class_scores=class_scores,
    )

    keep, count = jax.vmap(lambda b, s, l: postprocess.batched_nms(b, s, l, s > 0, iou, max_out))(
        boxes, scores, labels
    )
    keep, count = np.asarray(keep), np.asarray(count)
    assert count.tolist()[:2] == [max_out, max_out] and count[2] == 0  # the cap and the empty case
    np.testing.assert_array_equal(out["num_valid"], count)
    for b in range(len(count)):
        idx = keep[b, : count[b]]
        np.testing.assert_array_equal(out["labels"][b, : count[b]], labels[b, idx])
        np.testing.assert_allclose(out["scores"][b, : count[b]], scores[b, idx], rtol=0, atol=0)
        np.testing.assert_allclose(out["boxes"][b, : count[b]], boxes[b, idx], rtol=0, atol=0)
        assert np.all(out["labels"][b, count[b] :] == -1)
        assert np.all(out["scores"][b, count[b] :] == 0)


SHAPES_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "ssdlite_shapes.py"


def random_checkpoint(
    directory: pathlib.Path, overrides: tuple[str, ...], image_dependent: bool = False
) -> pathlib.Path:
    """An orbax checkpoint of ssdlite_shapes with ``overrides``: random weights, BN statistics.

    By default every weight is N(0, 0.1), which shrinks the input's signal layer by layer: the
    outputs hardly depend on the image. ``image_dependent``: kernels N(0, 2 / fan-in) and BN
    scales U(0.7, 1.3), so that they do (distinct scores for detection comparisons).
    """
    from flax import traverse_util

    from ssd_jax.checkpoints import save_variables
    from ssd_jax.config import load_config
    from ssd_jax.models.assembly import zero_variables

    config = load_config(SHAPES_CONFIG, list(overrides))
    rng = np.random.default_rng(0)

    def draw(key: tuple, z: np.ndarray) -> np.ndarray:
        if key[-1] == "var":
            return rng.uniform(0.5, 2.0, z.shape)
        if image_dependent and key[-1] == "kernel" and z.ndim == 4:
            return rng.normal(0, np.sqrt(2 / np.prod(z.shape[:-1])), z.shape)
        if image_dependent and key[-1] == "scale":
            return rng.uniform(0.7, 1.3, z.shape)
        return rng.normal(0, 0.1, z.shape)

    flat = traverse_util.flatten_dict(zero_variables(config))
    variables = traverse_util.unflatten_dict(
        {k: draw(k, z).astype(z.dtype) for k, z in flat.items()}
    )
    meta = {"config": config.name, "class_names": list(config.class_names)}
    return pathlib.Path(save_variables(directory, variables, meta))


def test_cli(tmp_path):
    """``ssd-jax-export`` with config overrides: raw jax artifact, anchors, metadata; an existing
    output is not replaced without --overwrite. The CLI's plumbing, on a random-weight 32 px
    SSDLite: its outputs equal the Detector's on the same checkpoint (the exported fixtures
    against mmdetection's references are test_raw_outputs and the tests after it)."""
    from ssd_jax import Detector
    from ssd_jax.export import runtime as rt
    from ssd_jax.export.__main__ import main
    from ssd_jax.export.onnx_export import anchors_path
    from ssd_jax.preprocess import normalize

    ckpt = random_checkpoint(tmp_path / "ckpt", SMALL_SSDLITE)
    small = [f"--config.{o}" for o in SMALL_SSDLITE]
    out = tmp_path / "lite_raw.jaxexport"
    assert (
        main(
            [
                "--config",
                str(SHAPES_CONFIG),
                "--checkpoint",
                str(ckpt),
                "--format",
                "jax",
                "--raw",
                "--out",
                str(out),
                "--platforms",
                "cpu",
                *small,
                "--config.test.score_thr=0.3",
            ]
        )
        == 0
    )
    model = rt.load(out)
    assert model.kind == "raw" and model.settings["score_thr"] == 0.3
    assert model.exported.platforms == ("cpu",)
    assert list(model.class_names) == ["ellipse", "rectangle", "triangle", "star"]
    det = Detector.from_checkpoint(SHAPES_CONFIG, ckpt, overrides=list(SMALL_SSDLITE))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    raw = model(images=images)
    cls, box = det.forward(normalize(images, det.config.model.mean, det.config.model.std))
    n, classes = len(images), len(model.class_names) + 1
    cls = np.concatenate([np.asarray(c).reshape(n, -1, classes) for c in cls], 1)
    box = np.concatenate([np.asarray(b).reshape(n, -1, 4) for b in box], 1)
    assert np.abs(cls).max() > 0.1  # the random weights give outputs to compare
    assert_close_rel(raw["cls_logits"], cls, "cli cls")
    assert_close_rel(raw["bbox_deltas"], box, "cli reg")
    anchors = np.load(anchors_path(out))
    np.testing.assert_allclose(anchors, np.concatenate(det.anchors()), rtol=0, atol=1e-4)
    before = out.read_bytes()
    assert (
        main(
            [
                "--config",
                str(SHAPES_CONFIG),
                "--checkpoint",
                str(ckpt),
                "--format",
                "jax",
                "--out",
                str(out),
                *small,
            ]
        )
        == 2
    )
    assert out.read_bytes() == before
