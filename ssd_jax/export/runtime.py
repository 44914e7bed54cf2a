"""Loading and running exported models: ONNX Runtime, OpenVINO (ONNX files), jax.export and
LiteRT (.tflite files).

    model = load("ssdlite.onnx")                 # or runtime="openvino"; "x.jaxexport" → jax
    model = load("ssdlite.tflite")               # LiteRT (ai-edge-litert)
    dets = predict(model, [image_rgb_uint8, ...])  # per image boxes/scores/labels, original px
    out = model(images=u8_batch, scale_factors=s)  # the graph's outputs as NumPy arrays

Every model takes ``images`` (B, S, S, 3) uint8 RGB at the config's input size S (detection
models also ``scale_factors`` (B, 2) float32) and returns a dict named as the graph's outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from ssd_jax.preprocess import resize_batch

RUNTIMES = ("onnxruntime", "openvino", "jax", "litert")
# The .tflite metadata entry with the settings and class names (``tflite_export``).
TFLITE_METADATA = "ssd_jax"


class ExportedModel:
    """An exported model and its metadata (``kind`` 'detect' or 'raw', ``settings``, classes,
    ``quantization``: 'none', 'int8' or 'int8-openvino'; '' where the file does not say)."""

    output_names: tuple[str, ...]

    def __init__(self, meta: dict[str, str]):
        self.kind = meta.get("ssd_jax.kind", "")
        self.settings = json.loads(meta.get("ssd_jax.settings", "{}"))
        self.class_names = tuple(json.loads(meta.get("ssd_jax.class_names", "[]")))
        self.category_ids = tuple(json.loads(meta.get("ssd_jax.category_ids", "[]")))
        self.quantization = meta.get("ssd_jax.quantization", "")

    @property
    def input_size(self) -> int:
        return int(self.settings["input_size"])

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OnnxRuntimeModel(ExportedModel):
    """An ONNX file run by ONNX Runtime (CPU unless ``providers`` says otherwise)."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            str(path), providers=list(providers or ["CPUExecutionProvider"])
        )
        super().__init__(dict(self.session.get_modelmeta().custom_metadata_map))
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(list(self.output_names), inputs)))


class OpenVINOModel(ExportedModel):
    """An ONNX file compiled by OpenVINO.

    ``precision`` 'f32' by default: OpenVINO's CPU plugin otherwise infers in bfloat16 on CPUs
    with AMX/AVX512-BF16, which moves SSD's head outputs by ~5 % (beyond parity tolerances).
    """

    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str = "f32"):
        import onnx
        import openvino as ov

        props = onnx.load(str(path), load_external_data=False).metadata_props
        super().__init__({p.key: p.value for p in props})
        config = {"INFERENCE_PRECISION_HINT": precision} if device == "CPU" else {}
        self.compiled = ov.Core().compile_model(str(path), device, config)
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = self.compiled(inputs)
        return {
            name: np.asarray(result[out])
            for name, out in zip(self.output_names, self.compiled.outputs)
        }


class JaxExportModel(ExportedModel):
    """A ``jax.export`` artifact (``jax_export.export_jax``), run on JAX's default device."""

    def __init__(self, path: str | os.PathLike):
        import jax

        from ssd_jax.export.jax_export import metadata_path

        path = pathlib.Path(path)
        self.exported = jax.export.deserialize(bytearray(path.read_bytes()))
        meta_file = metadata_path(path)
        super().__init__(json.loads(meta_file.read_text()) if meta_file.is_file() else {})
        if not self.settings:  # the artifact alone still gives the input size
            self.settings = {"input_size": int(self.exported.in_avals[0].shape[1])}
        self._call = jax.jit(self.exported.call)
        self.input_names = (
            ("images",) if len(self.exported.in_avals) == 1 else ("images", "scale_factors")
        )

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        import jax

        out = self._call(*(inputs[name] for name in self.input_names))
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def read_tflite_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``TFLITE_METADATA`` entry of a ``.tflite`` file ({} if none); needs only LiteRT."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(pathlib.Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == TFLITE_METADATA.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


class LiteRTModel(ExportedModel):
    """A ``.tflite`` file (``tflite_export``) run by LiteRT's interpreter (XNNPACK) on
    ``num_threads`` CPU threads (default: one per CPU core, as ONNX Runtime).

    The file's batch size is fixed at export; a call with a larger batch runs it in slices of
    that size (the last slice padded with copies of the last image).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(read_tflite_metadata(path))
        self.interpreter = Interpreter(
            model_path=str(path), num_threads=num_threads or os.cpu_count() or 1
        )
        self.runner = self.interpreter.get_signature_runner()
        inputs = self.runner.get_input_details()
        self.batch = int(inputs["images"]["shape"][0])
        if not self.settings:  # a .tflite from elsewhere still gives the input size
            self.settings = {"input_size": int(inputs["images"]["shape"][1])}
        self.output_names = tuple(self.runner.get_output_details())

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        n = len(inputs["images"])
        pad = -n % self.batch
        if pad:
            inputs = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in inputs.items()}
        parts = [
            self.runner(**{k: v[start : start + self.batch] for k, v in inputs.items()})
            for start in range(0, n + pad, self.batch)
        ]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts])[:n] for k in parts[0]}


SUFFIX_RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert"}


def default_runtime(path: str | os.PathLike) -> str:
    """The runtime of a file's suffix: .onnx → onnxruntime, .tflite → litert, else jax."""
    return SUFFIX_RUNTIMES.get(pathlib.Path(path).suffix, "jax")


def load(path: str | os.PathLike, runtime: str | None = None) -> ExportedModel:
    """Load an exported file; ``runtime`` one of ``RUNTIMES`` (default: by the file's suffix)."""
    runtime = runtime or default_runtime(path)
    if runtime == "onnxruntime":
        return OnnxRuntimeModel(path)
    if runtime == "openvino":
        return OpenVINOModel(path)
    if runtime == "jax":
        return JaxExportModel(path)
    if runtime == "litert":
        return LiteRTModel(path)
    raise ValueError(f"runtime {runtime!r}: expected one of {RUNTIMES}")


def predict(model: ExportedModel, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per image ``{'boxes' (K, 4) xyxy original pixels, 'scores' (K,), 'labels' (K,)}``."""
    if model.kind == "raw":
        raise ValueError("predict needs a detection export (this one was exported with --raw)")
    x, scales = resize_batch([np.asarray(im, np.uint8) for im in images], model.input_size)
    out = model(images=x, scale_factors=scales)
    return [
        {
            "boxes": out["boxes"][i, :k],
            "scores": out["scores"][i, :k],
            "labels": out["labels"][i, :k],
        }
        for i, k in enumerate(int(n) for n in out["num_valid"])
    ]


def detect_batch(model: ExportedModel, images: np.ndarray, scale_factors: np.ndarray):
    """``Detector.detect_batch`` for an exported detection model: resized uint8 images
    (N, S, S, 3) and (N, 2) scale factors → ``postprocess.Detections`` of NumPy arrays."""
    from ssd_jax.postprocess import Detections

    if model.kind == "raw":
        raise ValueError("a --raw export has no detections; export without --raw")
    out = model(
        images=np.asarray(images, np.uint8), scale_factors=np.asarray(scale_factors, np.float32)
    )
    return Detections(out["boxes"], out["scores"], out["labels"], out["num_valid"])


def sharded_detect(model: ExportedModel):
    """A stand-in for ``evaluation.inference.make_p_detect`` running ``model``: (ignored
    variables, images [D, B, S, S, 3], scale factors [D, B, 2]) → Detections [D, B, ...]."""

    def detect(variables, images, scale_factors):
        del variables
        images, scale_factors = np.asarray(images), np.asarray(scale_factors)
        d, b = images.shape[:2]
        flat = detect_batch(
            model, images.reshape((d * b,) + images.shape[2:]), scale_factors.reshape(d * b, 2)
        )
        return type(flat)(*(np.asarray(x).reshape((d, b) + np.shape(x)[1:]) for x in flat))

    return detect


class ExportedDetector:
    """An exported detection model behind ``Detector``'s ``predict`` / ``class_names``."""

    def __init__(self, model: ExportedModel):
        if model.kind == "raw":
            raise ValueError("a --raw export has no detections; export without --raw")
        self.model = model
        self.class_names = model.class_names
        self.category_ids = model.category_ids

    def predict(
        self, images: Sequence[np.ndarray], batch_size: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Per image ``{'boxes' (K, 4) xyxy original pixels, 'scores', 'labels'}``."""
        batch_size = batch_size or len(images) or 1
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, len(images), batch_size):
            out.extend(predict(self.model, images[start : start + batch_size]))
        return out
