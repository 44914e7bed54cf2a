"""LiteRT (TFLite) export on a small random-weight SSDLite: the CLI's file against the JAX
Detector, int8 quantization, TFLite's NMS against ``postprocess.batched_nms``, CLI refusals; and
ONNX Runtime's static int8 (``--format onnx --quantize int8``) on the same model.

The fixtures' float32 parity (against mmdetection's references) is in test_export.py
(runtime 'litert'). tensorflow-cpu and ai-edge-litert come from requirements-export.txt.
"""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import pytest
from test_export import SHAPES_CONFIG, _nms_problem, random_checkpoint, require

from builders import SMALL_SSDLITE
from test_parity import assert_detections_match

SMALL = [f"--config.{o}" for o in SMALL_SSDLITE]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    return random_checkpoint(
        tmp_path_factory.mktemp("litert") / "ckpt", SMALL_SSDLITE, image_dependent=True
    )


def _export(checkpoint: pathlib.Path, out: pathlib.Path, *extra: str, fmt="tflite") -> int:
    from ssd_jax.export.__main__ import main

    return main(
        [
            "--config",
            str(SHAPES_CONFIG),
            "--checkpoint",
            str(checkpoint),
            "--format",
            fmt,
            "--out",
            str(out),
            *SMALL,
            *extra,
        ]
    )


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40 + 9 * i, 50 - 4 * i, 3), dtype=np.uint8) for i in range(3)]


def test_cli_tflite_detections_equal_jax(checkpoint, tmp_path, capsys):
    """``--format tflite`` float32: LiteRT's detections are the Detector's (same rule as the
    fixtures' parity: label, IoU ≥ 0.99, score within 1e-4), three images of other sizes in one
    call to the batch-1 file; settings and class names travel inside the file."""
    require("tensorflow", "ai_edge_litert")
    from ssd_jax import Detector
    from ssd_jax.export import runtime as rt

    out = tmp_path / "lite.tflite"
    assert _export(checkpoint, out, "--config.test.score_thr=0.05") == 0
    assert "wrote model" in capsys.readouterr().out
    model = rt.load(out)
    assert isinstance(model, rt.LiteRTModel) and model.batch == 1
    assert model.kind == "detect" and model.settings["score_thr"] == 0.05
    assert list(model.class_names) == ["ellipse", "rectangle", "triangle", "star"]
    assert [p.name for p in tmp_path.iterdir()] == ["lite.tflite"]  # the metadata is inside
    det = Detector.from_checkpoint(
        SHAPES_CONFIG, checkpoint, overrides=[*SMALL_SSDLITE, "test.score_thr=0.05"]
    )
    images = _images()
    ours, ref = rt.predict(model, images), det.predict(images)
    for o, r in zip(ours, ref):
        assert len(np.unique(r["scores"])) > 100  # distinct scores: no ties for NMS to break
        assert np.all(np.diff(o["scores"]) <= 0)
        assert_detections_match(o, r["boxes"], r["scores"], r["labels"], 200)


def op_types(path: pathlib.Path) -> collections.Counter:
    """How many ops of each (builtin op, output type) a .tflite file's main graph has."""
    from ai_edge_litert import schema_py_generated as schema

    def names(cls) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if not k.startswith("_")}

    ops, types = names(schema.BuiltinOperator), names(schema.TensorType)
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    counts: collections.Counter = collections.Counter()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        counts[ops[builtin], types[graph.Tensors(op.Outputs(0)).Type()]] += 1
    return counts


def test_cli_tflite_int8(checkpoint, tmp_path, capsys):
    """``--quantize int8``: calibrated on the stated number of the folder's images; every
    convolution int8, decoding float32; smaller than float32's file; detections close to
    float32's (8 of its top 10 found with the same label at IoU ≥ 0.5, top score within 0.02)."""
    require("tensorflow", "ai_edge_litert")
    from ssd_jax.export import runtime as rt
    from test_parity import box_iou

    folder = _calibration_folder(tmp_path)
    fp32, int8 = tmp_path / "fp32.tflite", tmp_path / "int8.tflite"
    assert _export(checkpoint, fp32) == 0
    assert _export(
        checkpoint, int8, "--quantize", "int8", "--calibration", str(folder),
        "--calibration-images", "4",
    ) == 0  # fmt: skip
    assert "int8, calibrated on 4 images" in capsys.readouterr().out
    assert int8.stat().st_size < 0.8 * fp32.stat().st_size  # graph ops weigh much here
    model = rt.load(int8)
    assert model.settings["score_thr"] == 0.02
    ops = op_types(int8)
    assert {t for (op, t) in ops if op in ("CONV_2D", "DEPTHWISE_CONV_2D")} == {"INT8"}, ops
    assert {t for (op, t) in ops if op in ("EXP", "SOFTMAX", "TOPK_V2")} == {"FLOAT32"}, ops
    images = _images()
    for q, f in zip(rt.predict(model, images), rt.predict(rt.load(fp32), images)):
        assert len(q["scores"]) > 10 and np.all(np.diff(q["scores"]) <= 0)
        assert abs(float(q["scores"][0]) - float(f["scores"][0])) < 0.02
        iou = box_iou(f["boxes"][:10], q["boxes"])
        same = (iou >= 0.5) & (f["labels"][:10, None] == q["labels"][None, :])
        assert same.any(axis=1).sum() >= 8


def _calibration_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    """Six images (the three of ``_images`` twice) and a text file, which is not an image."""
    from PIL import Image

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(_images() * 2):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _assert_int8_close(model, reference) -> None:
    """The int8 ``model``'s detections on ``_images()`` close to the float32 ``reference``'s
    (the LiteRT int8 rule: 8 of its top 10 with the same label at IoU ≥ 0.5, top score within
    0.02), sorted, and more than 10 per image."""
    from ssd_jax.export import runtime as rt
    from test_parity import box_iou

    images = _images()
    for q, f in zip(rt.predict(model, images), rt.predict(reference, images), strict=True):
        assert len(q["scores"]) > 10 and np.all(np.diff(q["scores"]) <= 0)
        assert abs(float(q["scores"][0]) - float(f["scores"][0])) < 0.02
        iou = box_iou(f["boxes"][:10], q["boxes"])
        same = (iou >= 0.5) & (f["labels"][:10, None] == q["labels"][None, :])
        assert same.any(axis=1).sum() >= 8


def test_cli_onnx_int8(checkpoint, tmp_path, capsys):
    """``--format onnx --quantize int8``: ONNX Runtime's static int8 calibrated on the stated
    number of the folder's images; every convolution reads int8 weights through
    DequantizeLinear, NMS stays float32; detections close to float32's in ONNX Runtime (the
    LiteRT int8 rule: 8 of its top 10 with the same label at IoU ≥ 0.5, top score within 0.02)."""
    require("onnx", "onnxruntime", "jax2onnx")
    import onnx

    from ssd_jax.export import runtime as rt

    folder = _calibration_folder(tmp_path)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    assert _export(checkpoint, fp32, fmt="onnx") == 0
    args = ["--quantize", "int8", "--calibration", str(folder), "--calibration-images", "4"]
    assert _export(checkpoint, int8, *args, fmt="onnx") == 0
    assert "int8, calibrated on 4 images" in capsys.readouterr().out
    meta = {f: {p.key: p.value for p in onnx.load(str(f)).metadata_props} for f in (fp32, int8)}
    assert meta[int8]["ssd_jax.quantization"] == "int8"
    assert meta[fp32]["ssd_jax.quantization"] == "none"
    assert int8.stat().st_size < 0.8 * fp32.stat().st_size
    graph = onnx.load(str(int8)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(produced_by.get(c.input[1]) == "DequantizeLinear" for c in convs)
    weights = {i.name: i.data_type for i in graph.initializer}
    quantized = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"]
    assert onnx.TensorProto.INT8 in {weights.get(q) for q in quantized}
    nms = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    assert nms and all(produced_by.get(n.input[0]) != "DequantizeLinear" for n in nms)
    model, reference = rt.load(int8), rt.load(fp32)
    assert model.settings["score_thr"] == 0.02
    _assert_int8_close(model, reference)


def test_cli_onnx_int8_openvino(checkpoint, tmp_path, capsys):
    """``--format onnx --quantize int8-openvino``: NNCF's int8, calibrated on the stated number
    of the folder's images; every convolution reads int8 weights and int8 activations, nothing
    after the head is quantized (the NMS and the decoding read float32); detections close to
    float32's in OpenVINO (the LiteRT int8 rule)."""
    require("onnx", "openvino", "nncf", "jax2onnx")
    import onnx

    from ssd_jax.export import runtime as rt

    folder = _calibration_folder(tmp_path)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    assert _export(checkpoint, fp32, fmt="onnx") == 0
    args = ["--quantize", "int8-openvino", "--calibration", str(folder)]
    assert _export(checkpoint, int8, *args, "--calibration-images", "4", fmt="onnx") == 0
    assert "int8-openvino, calibrated on 4 images" in capsys.readouterr().out
    model_proto = onnx.load(str(int8))
    assert {p.key: p.value for p in model_proto.metadata_props}["ssd_jax.quantization"] == (
        "int8-openvino"
    )
    graph = model_proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    dequantized = lambda name: (
        producer.get(name) is not None
        and (  # noqa: E731
            producer[name].op_type == "DequantizeLinear"
        )
    )
    assert convs and all(dequantized(c.input[0]) and dequantized(c.input[1]) for c in convs)
    # what follows the head (the nodes no Conv depends on): float32, NMS included
    upstream, stack = set(), list(convs)
    while stack:
        node = stack.pop()
        if id(node) not in upstream:
            upstream.add(id(node))
            stack += [producer[i] for i in node.input if i in producer]
    tail = {n.op_type for n in graph.node if id(n) not in upstream}
    assert {"Softmax", "NonMaxSuppression"} <= tail, tail
    assert not {"QuantizeLinear", "DequantizeLinear"} & tail, tail
    model, reference = rt.load(int8, "openvino"), rt.load(fp32, "openvino")
    _assert_int8_close(model, reference)


def test_tflite_nms_is_greedy_class_aware_nms(tmp_path):
    """The TFLite NMS tail (``NON_MAX_SUPPRESSION_V4`` per class, then the top max_per_img)
    keeps what ``postprocess.batched_nms`` keeps, in the same order, run by LiteRT."""
    require("tensorflow", "ai_edge_litert")
    import jax
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from ssd_jax import postprocess
    from ssd_jax.export import graph
    from ssd_jax.export.tflite_export import _tf_nms

    boxes, scores, labels = _nms_problem()
    classes, max_out, iou = 3, 40, 0.45
    class_scores = np.where(
        labels[:, None, :] == np.arange(classes)[None, :, None], scores[:, None, :], -1.0
    ).astype(np.float32)
    inputs = {"b": boxes, "s": scores, "l": labels, "cs": class_scores}
    module = tf.Module()
    module.f = tf.function(
        lambda b, s, l, cs: _tf_nms(tf, graph.Candidates(b, s, l, cs), iou, max_out),
        input_signature=[tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in inputs.items()],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module
    )
    out = Interpreter(model_content=converter.convert()).get_signature_runner()(**inputs)

    keep, count = jax.vmap(lambda b, s, l: postprocess.batched_nms(b, s, l, s > 0, iou, max_out))(
        boxes, scores, labels
    )
    keep, count = np.asarray(keep), np.asarray(count)
    assert count.tolist()[:2] == [max_out, max_out] and count[2] == 0  # the cap and the empty case
    np.testing.assert_array_equal(out["num_valid"], count)
    for b in range(len(count)):
        idx = keep[b, : count[b]]
        np.testing.assert_array_equal(out["labels"][b, : count[b]], labels[b, idx])
        np.testing.assert_array_equal(out["scores"][b, : count[b]], scores[b, idx])
        np.testing.assert_array_equal(out["boxes"][b, : count[b]], boxes[b, idx])
        assert np.all(out["labels"][b, count[b] :] == -1)
        assert np.all(out["scores"][b, count[b] :] == 0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("existing", "exists and is not empty"),
        ("missing", "not a folder"),
        ("no_images", "no images in the folder"),
        ("no_calibration", "needs --calibration DIR"),
        ("jax_format", "is for --format tflite or onnx"),
        ("openvino_tflite", "int8-openvino is for --format onnx"),
    ],
)
def test_cli_refusals(tmp_path, capsys, case, message):
    """One line on stderr and exit status 2, before any export (no TensorFlow needed): an
    existing output without --overwrite, a missing calibration folder, one without images."""
    out = tmp_path / "model.tflite"
    extra: list[str] = []
    if case == "existing":
        out.write_bytes(b"keep me")
    elif case == "no_calibration":
        extra = ["--quantize", "int8"]
    elif case == "jax_format":
        extra = ["--quantize", "int8", "--calibration", str(tmp_path), "--format", "jax"]
    elif case == "openvino_tflite":  # NNCF's int8 is an ONNX file's
        extra = ["--quantize", "int8-openvino", "--calibration", str(tmp_path)]
    else:
        folder = tmp_path / "calibration"
        if case == "no_images":
            folder.mkdir()
            (folder / "readme.txt").write_text("no pictures here")
        extra = ["--quantize", "int8", "--calibration", str(folder)]
    assert _export(tmp_path / "no_checkpoint", out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert out.read_bytes() == b"keep me" if case == "existing" else not out.exists()


def test_cli_tflite_raw(checkpoint, tmp_path):
    """``--format tflite --raw``: the head outputs equal the Detector's (parity tolerances) and
    the anchors .npy beside the file is the Detector's."""
    require("tensorflow", "ai_edge_litert")
    from ssd_jax import Detector
    from ssd_jax.export import runtime as rt
    from ssd_jax.export.onnx_export import anchors_path
    from ssd_jax.preprocess import normalize
    from test_parity import assert_close_rel

    out = tmp_path / "raw.tflite"
    assert _export(checkpoint, out, "--raw") == 0
    model = rt.load(out)
    assert model.kind == "raw"
    det = Detector.from_checkpoint(SHAPES_CONFIG, checkpoint, overrides=list(SMALL_SSDLITE))
    images = np.stack(_images()[0:1] * 2)[:, :32, :32]  # two 32 px crops, one call
    raw = model(images=images)
    cls, box = det.forward(normalize(images, det.config.model.mean, det.config.model.std))
    n, classes = len(images), len(model.class_names) + 1
    assert_close_rel(
        raw["cls_logits"], np.concatenate([np.reshape(c, (n, -1, classes)) for c in cls], 1), "cls"
    )
    assert_close_rel(
        raw["bbox_deltas"], np.concatenate([np.reshape(b, (n, -1, 4)) for b in box], 1), "reg"
    )
    np.testing.assert_allclose(
        np.load(anchors_path(out)), np.concatenate(det.anchors()), rtol=0, atol=1e-4
    )
