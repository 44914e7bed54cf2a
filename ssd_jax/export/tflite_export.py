"""LiteRT (TFLite) export: the same JAX functions as ``jax_export``, through jax2tf and TF's
TFLite converter, decoding and NMS included.

Route: ``jax2tf.convert`` wraps the function's StableHLO in a TF ``XlaCallModule`` op, and
``tf.lite.TFLiteConverter`` legalizes that StableHLO to TFLite builtin ops (convolutions,
``TOPK_V2``, gathers, the NMS's ``lax.while_loop`` as ``WHILE``). TF 2.21 reads StableHLO
portable artifacts up to version ``TF_STABLEHLO_VERSION``, while JAX 0.10.2 writes a newer one
by default, so the module is serialized for that older version (``stablehlo_target``); the
ops our graphs use exist there. Convolutions use the ONNX export's layer forms
(``layers.onnx_friendly_layers``: BatchNorm folded, 1×1 and depthwise as convolutions): the
model's matrix-product form of a 1×1 convolution does not legalize (rank-4 ``BATCH_MATMUL``).

Detection model (default): signature ``serving_default`` with inputs ``images`` (B, S, S, 3)
uint8 RGB at the config's input size S and ``scale_factors`` (B, 2) float32, outputs ``boxes``
(B, M, 4) float32 xyxy original-image pixels, ``scores`` (B, M), ``labels`` (B, M) int32
(−1 = padding), ``num_valid`` (B,) int32, M = max_per_img, as ``onnx_export``. Raw model:
``images`` → ``cls_logits`` (B, A, C+1), ``bbox_deltas`` (B, A, 4), anchors .npy beside it.
B is fixed at export (``batch``, default 1). Settings and class names go to ``PATH.json``.

int8 (``quantize='int8'``): post-training full-integer quantization of the convolutions'
weights and activations, calibrated on the given uint8 images; inputs and outputs stay as
above (uint8 images, float32 boxes/scores), and ops without an int8 kernel (the decoding and
NMS arithmetic) run in float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ssd_jax.export import graph, layers
from ssd_jax.export.jax_export import metadata_path
from ssd_jax.export.onnx_export import anchors_path, metadata

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


def _named_function(detector, raw: bool) -> tuple[Callable, tuple[str, ...]]:
    """The exported JAX function returning a dict, and its input names."""
    if raw:
        fn = graph.raw_fn(detector)

        def raw_dict(images):
            cls_logits, bbox_deltas = fn(images)
            return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas}

        return raw_dict, ("images",)
    detect = graph.detect_fn(detector)
    return (lambda images, scale_factors: detect(images, scale_factors)._asdict()), (
        "images",
        "scale_factors",
    )


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
    size = graph.settings_of(detector).input_size
    fn, names = _named_function(detector, raw)
    specs = [tf.TensorSpec((batch, size, size, 3), tf.uint8, name="images")]
    if not raw:
        specs.append(tf.TensorSpec((batch, 2), tf.float32, name="scale_factors"))
    converted = jax2tf.convert(fn, with_gradient=False, native_serialization_platforms=("cpu",))
    module = tf.Module()
    module.f = tf.function(lambda *args: converted(*args), input_signature=specs, autograph=False)
    with stablehlo_target(), layers.onnx_friendly_layers():
        concrete = module.f.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # Keyed by input name: the converted model's inputs need not be in ``names``' order.
        converter.representative_dataset = lambda: (
            dict(zip(names, (np.asarray(x) for x in item))) for item in calibration
        )
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    return converter.convert()


def export_tflite(
    detector,
    path: str | os.PathLike,
    raw: bool = False,
    batch: int = 1,
    quantize: str | None = None,
    calibration: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Write ``detector`` as a ``.tflite`` file (+ ``PATH.json``); returns what was written."""
    flatbuffer = to_tflite(detector, raw, batch, quantize, calibration)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    meta = metadata(detector, "raw" if raw else "detect")
    meta["ssd_jax.quantization"] = quantize or "none"
    metadata_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    written = {"model": str(path), "metadata": str(metadata_path(path))}
    if raw:
        np.save(anchors_path(path), detector.flat_anchors.astype(np.float32))
        written["anchors"] = str(anchors_path(path))
    return written
