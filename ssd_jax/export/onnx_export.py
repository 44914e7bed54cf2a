"""ONNX export through jax2onnx (network, normalisation, decoding) plus ``onnx_nms`` (NMS).

Detection model (default):
  inputs   images (B, S, S, 3) uint8 RGB, resized to the config's input size S;
           scale_factors (B, 2) float32 (w_scale, h_scale) from original to input pixels
           (``Detector.preprocess`` returns them; ones give boxes in input pixels).
  outputs  boxes (B, M, 4) float32 xyxy original-image pixels, scores (B, M), labels (B, M)
           int32 (-1 = padding), num_valid (B,) int32; M = max_per_img (200).
Raw model (``raw=True``):
  inputs   images as above; outputs cls_logits (B, A, C+1) (class C = background) and
           bbox_deltas (B, A, 4), A = all anchors; the anchors (A, 4) xyxy input pixels go to
           ``anchors_path(path)`` as .npy.
B is dynamic. The model's settings (input size, classes, test_cfg) are in its metadata_props.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.export import graph, jax2onnx_compat, layers, onnx_layout, onnx_nms

# ONNX opset of the exported graphs (tested with ONNX Runtime 1.32 and OpenVINO 2026.4).
OPSET = 21
#: ``quantize`` values: ONNX Runtime's static int8, and NNCF's int8 for OpenVINO.
QUANTIZATIONS = ("int8", "int8-openvino")
BATCH = "B"
# protobuf's 2 GiB message limit: larger models keep their weights in a ``.data`` file.
_MAX_INLINE_BYTES = 1 << 30


def anchors_path(path: str | os.PathLike) -> pathlib.Path:
    """Where a raw export's anchors go: ``model.onnx`` → ``model.anchors.npy``."""
    path = pathlib.Path(path)
    return path.with_name(path.stem + ".anchors.npy")


def metadata(detector, kind: str) -> dict[str, str]:
    """What a runtime needs to use an exported model; stored as string key/values."""
    s = graph.settings_of(detector)
    return {
        "ssd_jax.kind": kind,
        "ssd_jax.config": str(detector.config.get("name", "")),
        "ssd_jax.settings": json.dumps(s._asdict()),
        "ssd_jax.class_names": json.dumps(list(detector.class_names)),
        "ssd_jax.category_ids": json.dumps(
            [int(i) for i in detector.config.get("category_ids", ())]
        ),
    }


def _to_onnx(fn, inputs, input_names, output_names, name: str):
    with jax2onnx_compat.quiet():
        from jax2onnx import to_onnx  # optional dependency (requirements-export.txt)

        with jax2onnx_compat.explicit_pads_for_max_pool(), layers.onnx_friendly_layers():
            return to_onnx(
                fn,
                inputs,
                model_name=name,
                opset=OPSET,
                return_mode="proto",
                input_names=input_names,
                output_names=output_names,
            )


def quantize_int8(model, calibration: Iterable[tuple[np.ndarray, np.ndarray]], raw: bool):
    """``model`` with ONNX Runtime's static int8 quantization: weights int8 per output channel,
    activations uint8 (calibrated by min/max on ``calibration``, (images, scale_factors)
    pairs), in QDQ form; convolutions and matmuls only, so decoding and NMS stay float32."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            images, scale_factors = batch
            return {"images": images} if raw else {"images": images, "scale_factors": scale_factors}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "q.onnx"))
        onnx.save_model(model, fp32)
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)  # shapes for the quantizer
        quantize_static(
            prepared,
            int8,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        )
        quantized = onnx.load_model(int8)
    meta = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(quantized, {**meta, "ssd_jax.quantization": "int8"})
    return quantized


def _network_nodes(model) -> set[str]:
    """Names of the nodes that the graph's ``Conv`` nodes depend on, the ``Conv`` nodes
    included: the normalisation and the network, without what follows the head."""
    producer = {o: n for n in model.graph.node for o in n.output}
    stack = [n for n in model.graph.node if n.op_type == "Conv"]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return seen


def quantize_int8_openvino(model, calibration: Iterable[tuple[np.ndarray, np.ndarray]], raw: bool):
    """``model`` with NNCF's post-training int8 quantization for OpenVINO (its default CPU
    scheme: symmetric int8 weights per output channel and activations, fast bias correction),
    calibrated on ``calibration``, (images, scale_factors) pairs; the network only, so the
    softmax, decoding and NMS stay float32. QDQ form: OpenVINO runs it in int8 (ONNX Runtime
    runs it too, slowly)."""
    import logging

    import nncf
    import onnx

    batches = list(calibration)
    if not batches:
        raise ValueError("int8 quantization needs at least one calibration batch")
    for k, node in enumerate(model.graph.node):  # NNCF addresses nodes by name
        if not node.name:
            node.name = f"node_{k}_{node.op_type}"
    network = _network_nodes(model)
    ignored = [n.name for n in model.graph.node if n.name not in network]
    names = ("images",) if raw else ("images", "scale_factors")
    dataset = nncf.Dataset(batches, lambda batch: dict(zip(names, batch, strict=False)))
    logging.getLogger("nncf").setLevel(logging.WARNING)
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    meta = {p.key: p.value for p in model.metadata_props}
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, {**meta, "ssd_jax.quantization": "int8-openvino"})
    return quantized


def export_onnx(
    detector,
    path: str | os.PathLike,
    raw: bool = False,
    quantize: str | None = None,
    calibration: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Write ``detector`` as an ONNX model to ``path``; returns what was written.

    ``quantize="int8"``: ONNX Runtime's static int8 (``quantize_int8``); ``"int8-openvino"``:
    NNCF's int8 for OpenVINO (``quantize_int8_openvino``); both calibrated on ``calibration``,
    (images (1, S, S, 3) uint8, scale_factors (1, 2) float32) pairs.
    """
    import onnx

    s = graph.settings_of(detector)
    size = s.input_size
    images = jax.ShapeDtypeStruct((BATCH, size, size, 3), jnp.uint8)
    name = f"{detector.config.get('name', 'ssd')}_{'raw' if raw else 'detect'}"
    if raw:
        model = _to_onnx(
            graph.raw_fn(detector), [images], ["images"], ["cls_logits", "bbox_deltas"], name
        )
    else:
        scales = jax.ShapeDtypeStruct((BATCH, 2), jnp.float32)
        model = _to_onnx(
            graph.candidates_fn(detector),
            [images, scales],
            ["images", "scale_factors"],
            list(onnx_nms.CANDIDATE_OUTPUTS),
            name,
        )
        num_candidates = sum(
            min(s.nms_pre, len(a) * s.num_classes) if s.nms_pre > 0 else len(a) * s.num_classes
            for a in detector.anchors()
        )
        onnx_nms.append_nms(
            model,
            num_candidates=num_candidates,
            nms_iou=s.nms_iou,
            max_per_img=s.max_per_img,
            batch_dim=BATCH,
        )
    jax2onnx_compat.relu6_as_clip(model)
    onnx_layout.to_nchw(model)  # OpenVINO ran the NHWC ⇄ NCHW round trips at 0.2-0.4× speed
    meta = metadata(detector, "raw" if raw else "detect")
    meta["ssd_jax.quantization"] = quantize or "none"
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    if quantize == "int8":
        model = quantize_int8(model, calibration or (), raw)
    elif quantize == "int8-openvino":
        model = quantize_int8_openvino(model, calibration or (), raw)
    elif quantize:
        raise ValueError(f"quantize={quantize!r}: expected None or one of {QUANTIZATIONS}")

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > _MAX_INLINE_BYTES
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        location=path.name + ".data" if external else None,
    )
    written = {"model": str(path)}
    if external:
        written["weights"] = str(path) + ".data"
    if raw:
        np.save(anchors_path(path), detector.flat_anchors.astype(np.float32))
        written["anchors"] = str(anchors_path(path))
    return written
