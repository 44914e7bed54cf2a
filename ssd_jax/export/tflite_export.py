"""LiteRT (TFLite) export: the same JAX functions as ``jax_export``, through jax2tf and TF's
TFLite converter, decoding and NMS included.

Route: ``jax2tf.convert`` wraps ``graph.candidates_fn`` (normalisation, network, softmax,
score_thr, per-level top nms_pre, decoding, rescale) as StableHLO in a TF ``XlaCallModule`` op;
NMS is TF's ``NonMaxSuppressionV4`` per image and class (``_tf_nms``), TFLite's builtin
``NON_MAX_SUPPRESSION_V4``; ``tf.lite.TFLiteConverter`` legalizes all to TFLite builtin ops.
(The JAX NMS's ``lax.while_loop`` converts too, to ``WHILE``, but TF's int8 calibrator crashes
on it.) TF 2.21 reads StableHLO portable artifacts up to version ``TF_STABLEHLO_VERSION``,
while JAX 0.10.2 writes a newer one by default, so the module is serialized for that older
version (``stablehlo_target``); the ops our graphs use exist there. Convolutions use the ONNX
export's layer forms
(``layers.onnx_friendly_layers``: BatchNorm folded, 1×1 and depthwise as convolutions): the
model's matrix-product form of a 1×1 convolution does not legalize (rank-4 ``BATCH_MATMUL``).

Detection model (default): signature ``serving_default`` with inputs ``images`` (B, S, S, 3)
uint8 RGB at the config's input size S and ``scale_factors`` (B, 2) float32, outputs ``boxes``
(B, M, 4) float32 xyxy original-image pixels, ``scores`` (B, M), ``labels`` (B, M) int32
(−1 = padding), ``num_valid`` (B,) int32, M = max_per_img, as ``onnx_export``. Raw model:
``images`` → ``cls_logits`` (B, A, C+1), ``bbox_deltas`` (B, A, 4), anchors .npy beside it.
B is fixed at export (``batch``, default 1). Settings and class names are in the file: its
metadata entry ``runtime.TFLITE_METADATA`` holds ``onnx_export.metadata``'s dict as JSON.

int8 (``quantize='int8'``): post-training full-integer quantization of the network (weights
and activations, calibrated on the given uint8 images), as TFLite's quantized SSD models do;
normalisation, softmax, decoding and NMS stay float32 (``_quantize_network``), and the inputs
and outputs are as above.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ssd_jax.export import graph, layers
from ssd_jax.export.onnx_export import anchors_path, metadata
from ssd_jax.export.runtime import TFLITE_METADATA

# The newest StableHLO portable-artifact version that TF 2.21's XlaCallModule reads.
TF_STABLEHLO_VERSION = "1.13.0"
QUANTIZATIONS = ("int8",)


@contextlib.contextmanager
def stablehlo_target(version: str = TF_STABLEHLO_VERSION) -> Iterator[None]:
    """Serialize ``jax.export`` modules for StableHLO ``version`` inside this block.

    JAX chooses the target version with ``hlo.get_version_from_compatibility_requirement``
    (``jax._src.export._export``, no public setting); it is replaced here and restored after.
    """
    from jax._src.export import _export

    hlo = _export.hlo
    original = hlo.get_version_from_compatibility_requirement
    hlo.get_version_from_compatibility_requirement = lambda requirement: version
    try:
        yield
    finally:
        hlo.get_version_from_compatibility_requirement = original


def _tf_nms(tf, cands: graph.Candidates, nms_iou: float, max_per_img: int) -> dict[str, Any]:
    """Class-aware greedy NMS of the candidates with TFLite's ``NON_MAX_SUPPRESSION_V4``, one per
    image and class (B and C static), then the best ``max_per_img`` kept: the detection outputs.

    As ``onnx_nms``: each candidate belongs to one class, so the per-class selections are
    disjoint; their scores' top ``max_per_img`` is what ``postprocess.batched_nms`` keeps.
    """
    boxes, scores, labels, class_scores = cands  # [B, K, 4], [B, K], [B, K], [B, C, K]
    batch, num_classes = class_scores.shape[:2]
    m = min(max_per_img, int(scores.shape[1]))
    outputs: dict[str, list] = {"boxes": [], "scores": [], "labels": [], "num_valid": []}
    for b in range(batch):
        picked, picked_scores = [], []
        for c in range(num_classes):
            selected, count = tf.raw_ops.NonMaxSuppressionV4(
                boxes=boxes[b],  # xyxy: the kernel takes min/max of each coordinate pair
                scores=class_scores[b, c],
                max_output_size=max_per_img,
                iou_threshold=nms_iou,
                score_threshold=0.0,  # valid candidates score > 0, the others -1
                pad_to_max_output_size=True,
            )
            real = tf.range(max_per_img) < count
            picked.append(selected)
            picked_scores.append(tf.where(real, tf.gather(scores[b], selected), -1.0))
        top_scores, top = tf.math.top_k(tf.concat(picked_scores, 0), k=m)  # [M]
        index = tf.gather(tf.concat(picked, 0), top)
        ok = top_scores > 0
        outputs["boxes"].append(tf.where(ok[:, None], tf.gather(boxes[b], index), 0.0))
        outputs["scores"].append(tf.where(ok, top_scores, 0.0))
        outputs["labels"].append(tf.where(ok, tf.gather(labels[b], index), -1))
        outputs["num_valid"].append(tf.reduce_sum(tf.cast(ok, tf.int32)))
    return {k: tf.stack(v) for k, v in outputs.items()}


def to_tflite(
    detector,
    raw: bool = False,
    batch: int = 1,
    quantize: str | None = None,
    calibration: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> bytes:
    """The TFLite flatbuffer of ``detector``'s detection (or raw) function, batch ``batch``.

    ``quantize='int8'`` needs ``calibration``: (images (b, S, S, 3) uint8, scale_factors (b, 2)
    float32) batches with b == ``batch``, iterated once.
    """
    import tensorflow as tf  # optional dependency (requirements-export.txt)
    from jax.experimental import jax2tf

    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize {quantize!r}: expected None or one of {QUANTIZATIONS}")
    if quantize and calibration is None:
        raise ValueError("int8 quantization needs calibration images")
    settings = graph.settings_of(detector)
    size = settings.input_size
    specs = [tf.TensorSpec((batch, size, size, 3), tf.uint8, name="images")]
    if raw:
        names = ("images",)
        raw_outputs = jax2tf.convert(
            graph.raw_fn(detector), with_gradient=False, native_serialization_platforms=("cpu",)
        )

        def fn(images):
            cls_logits, bbox_deltas = raw_outputs(images)
            return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas}

    else:
        names = ("images", "scale_factors")
        specs.append(tf.TensorSpec((batch, 2), tf.float32, name="scale_factors"))
        candidates = jax2tf.convert(
            graph.candidates_fn(detector),
            with_gradient=False,
            native_serialization_platforms=("cpu",),
        )

        def fn(images, scale_factors):
            cands = graph.Candidates(*candidates(images, scale_factors))
            return _tf_nms(tf, cands, settings.nms_iou, settings.max_per_img)

    module = tf.Module()
    module.f = tf.function(fn, input_signature=specs, autograph=False)
    with stablehlo_target(), layers.onnx_friendly_layers():
        concrete = module.f.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "int8":
        return converter.convert()
    # Keyed by input name: the converted model's inputs need not be in ``names``' order.
    samples = [dict(zip(names, (np.asarray(x) for x in item))) for item in calibration]
    if not samples:
        raise ValueError("int8 quantization needs at least one calibration batch")
    return _quantize_network(tf, converter, samples, f"/{type(detector.model).__name__}/")


def _quantize_network(tf, converter, samples: list[dict], scope: str) -> bytes:
    """The int8 flatbuffer: every op of the network (output tensor names containing ``scope``,
    the Flax model's name in JAX's name stack) int8 with weights and activations calibrated on
    ``samples``; the others (normalisation, softmax, decoding, NMS) stay float32.

    Quantizing everything the converter can (softmax, ``exp``, top-k and gathers included: the
    decoding and the nms_pre ranking in int8) lost the detections: on the SSDLite fixture, 9
    and 0 of float32's top 20 of its two images were still found (IoU ≥ 0.5, same label); this
    way 19 and 19.
    """
    from ai_edge_litert import schema_py_generated as schema

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: iter(samples)
    )
    subgraph = schema.Model.GetRootAs(debugger.calibrated_model, 0).Subgraphs(0)
    outputs = {
        subgraph.Tensors(int(t)).Name().decode()
        for op in range(subgraph.OperatorsLength())
        for t in subgraph.Operators(op).OutputsAsNumpy()
    }
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=sorted(name for name in outputs if scope not in name),
        # Else the quantizer keeps the scores int8 through the per-level nms_pre top-k (a
        # "same scale" op). They are still requantized once after the softmax (its slice to
        # the C object classes stays int8 whatever the lists say): scores in 1/256 steps.
        denylisted_ops=["TOPK_V2"],
    )
    return debugger.get_nondebug_quantized_model()


def with_metadata(flatbuffer: bytes, meta: dict[str, str]) -> bytes:
    """``flatbuffer`` with ``meta`` (JSON) added as the metadata entry ``TFLITE_METADATA``."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(
    detector,
    path: str | os.PathLike,
    raw: bool = False,
    batch: int = 1,
    quantize: str | None = None,
    calibration: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Write ``detector`` as a ``.tflite`` file, settings and class names inside; returns what
    was written."""
    meta = metadata(detector, "raw" if raw else "detect")
    meta["ssd_jax.quantization"] = quantize or "none"
    flatbuffer = with_metadata(to_tflite(detector, raw, batch, quantize, calibration), meta)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    written = {"model": str(path)}
    if raw:
        np.save(anchors_path(path), detector.flat_anchors.astype(np.float32))
        written["anchors"] = str(anchors_path(path))
    return written
