"""``jax.export`` artifacts: the detection (or raw) function with its weights, serialized.

The artifact at ``path`` is ``jax.export.export(...).serialize()`` bytes (StableHLO with the
weights as constants); ``metadata_path(path)`` (``PATH.json``) holds the settings and class
names. Same inputs and outputs as the ONNX models (see ``onnx_export``), as dicts of arrays;
the batch dimension is symbolic. Detection uses ``ssd_jax.postprocess`` itself (its
``lax.while_loop`` NMS), so it is the reference semantics. Load with ``runtime.JaxExportModel``
(needs jax and jaxlib only, not ssd_jax's model code).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.export import graph
from ssd_jax.export.onnx_export import anchors_path, metadata

# Lowered for these jax platforms by default, so that one artifact can serve CPU and NVIDIA GPU
# hosts (the tests run it on CPU only; the CUDA lowering is made but not run there).
DEFAULT_PLATFORMS = ("cpu", "cuda")


def metadata_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def exported(
    detector, raw: bool = False, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
    """The ``jax.export.Exported`` of the raw or detection function, batch size symbolic."""
    size = graph.settings_of(detector).input_size
    (batch,) = jax.export.symbolic_shape("B")
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    if raw:
        fn = graph.raw_fn(detector)

        def raw_dict(images):
            cls_logits, bbox_deltas = fn(images)
            return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas}

        return jax.export.export(jax.jit(raw_dict), platforms=tuple(platforms))(images)

    fn = graph.detect_fn(detector)

    def detect_dict(images, scale_factors):
        return fn(images, scale_factors)._asdict()

    scales = jax.ShapeDtypeStruct((batch, 2), jnp.float32)
    return jax.export.export(jax.jit(detect_dict), platforms=tuple(platforms))(images, scales)


def export_jax(
    detector,
    path: str | os.PathLike,
    raw: bool = False,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, Any]:
    """Write the serialized ``jax.export`` artifact to ``path``; returns what was written."""
    exp = exported(detector, raw, platforms)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exp.serialize())
    meta = metadata(detector, "raw" if raw else "detect")
    meta["ssd_jax.platforms"] = json.dumps(list(exp.platforms))
    metadata_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    written = {"model": str(path), "metadata": str(metadata_path(path))}
    if raw:
        np.save(anchors_path(path), detector.flat_anchors.astype(np.float32))
        written["anchors"] = str(anchors_path(path))
    return written
