"""Exporting a Detector for serving: ONNX (jax2onnx), ``jax.export`` artifacts and LiteRT.

    python -m ssd_jax.export --config CFG --checkpoint CKPT --format onnx|jax|tflite --out PATH

    from ssd_jax.export import export, runtime
    export(detector, "ssd.onnx", "onnx")
    dets = runtime.predict(runtime.load("ssd.onnx"), images)

Exported detection models take uint8 RGB images resized to the config's input size and their
scale factors and return boxes in original-image pixels (``onnx_export`` documents the
signature); raw models return the head outputs. ``jax2onnx``/``onnx`` (ONNX export),
``onnxruntime`` and ``openvino`` (running ONNX), ``tensorflow-cpu`` (TFLite export) and
``ai-edge-litert`` (running it) are optional: requirements-export.txt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

FORMATS = ("onnx", "jax", "tflite")


def export(
    detector,
    path: str | os.PathLike,
    fmt: str,
    raw: bool = False,
    platforms: Sequence[str] = ("cpu", "cuda"),
    **options: Any,
) -> dict[str, Any]:
    """Write ``detector`` to ``path`` as ``fmt`` (one of ``FORMATS``); returns the files written.

    ``platforms``: the jax platforms a 'jax' artifact is lowered for (ignored otherwise).
    ``options``: quantize and calibration for 'onnx' (``onnx_export.export_onnx``); batch,
    quantize and calibration for 'tflite' (``tflite_export.export_tflite``).
    """
    if fmt == "onnx":
        from ssd_jax.export.onnx_export import export_onnx

        return export_onnx(detector, path, raw=raw, **options)
    if fmt == "jax":
        from ssd_jax.export.jax_export import export_jax

        return export_jax(detector, path, raw=raw, platforms=platforms)
    if fmt == "tflite":
        from ssd_jax.export.tflite_export import export_tflite

        return export_tflite(detector, path, raw=raw, **options)
    raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
