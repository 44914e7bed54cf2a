"""A config's detector, assembled: network, anchors, variable trees and test settings.

model = build_model(config.model, anchor_generator(config).num_anchors)
anchors = config_anchors(config)            # per level (H·W·A, 4) xyxy input pixels
variables = init_variables(model, config.input_size, seed=0)
zeros = zero_variables(config)              # the tree a checkpoint is loaded into
postprocess(..., **test_settings(config))   # mmdetection's test_cfg
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax.anchors import SSDAnchorGenerator
from ssd_jax.models.layers import BatchStats
from ssd_jax.models.ssd import SSD, build_model, compute_dtype


def anchor_generator(config: ml_collections.ConfigDict) -> SSDAnchorGenerator:
    """mmdetection's ``SSDAnchorGenerator`` of ``config.model.anchors`` at ``input_size``."""
    a = config.model.anchors
    return SSDAnchorGenerator(
        config.input_size, a.strides, a.ratios, a.basesize_ratio_range, a.min_sizes, a.max_sizes
    )


def input_dtype(config: ml_collections.ConfigDict) -> Any:
    """The dtype of normalised inputs: float32 (fp32, bf16), float64 for fp64."""
    return jnp.promote_types(compute_dtype(config.get("precision", "fp32")), jnp.float32)


def model_for(config: ml_collections.ConfigDict, batch_stats: BatchStats = BatchStats()) -> SSD:
    """The Flax SSD of ``config`` (its precision); ``batch_stats`` as ``build_model``."""
    return build_model(
        config.model,
        anchor_generator(config).num_anchors,
        batch_stats=batch_stats,
        precision=config.get("precision", "fp32"),
    )


def featmap_sizes(model: SSD, input_size: int) -> list[tuple[int, int]]:
    """(H, W) of every level for a square input, from the model's shapes (no compute)."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    init_features = functools.partial(model.init_with_output, method=SSD.features)
    feats, _ = jax.eval_shape(init_features, jax.random.PRNGKey(0), x)  # one trace, not two
    return [tuple(f.shape[1:3]) for f in feats]


def config_anchors(config: ml_collections.ConfigDict, model: SSD | None = None) -> list[np.ndarray]:
    """Per level (H·W·A, 4) float32 xyxy anchors in input pixels, mmdetection's order."""
    model = model or model_for(config)
    return anchor_generator(config).grid_anchors(featmap_sizes(model, config.input_size))


#: The initialisers' program runs once, for milliseconds, but its random-number code is slow to
#: compile: LLVM at -O1 compiles it in 40-80 % of the time of the default -O2 with bit-identical
#: values (2026-12-06, AMD EPYC: SSD300 3.9 s vs 8.8 s, SSD512 4.1 vs 9.4 s, SSDLite 9.4 s vs
#: 13.0 s, shapes 8.5 vs 10.6 s; every leaf equal), where -O0 would change the last bits of some.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_variables(model: SSD, input_size: int, seed: int = 0) -> dict:
    """Freshly initialised ``{'params', 'batch_stats'}`` (batch_stats empty for VGG)."""
    x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    if isinstance(x, jax.core.Tracer):  # traced (jit, eval_shape): part of the caller's program
        variables = model.init(jax.random.PRNGKey(seed), x)
    else:  # compiler options are only for a top-level jit
        init = jax.jit(model.init, compiler_options=INIT_COMPILER_OPTIONS)
        variables = init(jax.random.PRNGKey(seed), x)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def zero_variables(config: ml_collections.ConfigDict) -> dict:
    """``{'params', 'batch_stats'}`` of the config's model filled with zeros: the tree a
    checkpoint is strictly loaded into, without running (and compiling) the initialisers."""
    x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
    shapes = jax.eval_shape(model_for(config).init, jax.random.PRNGKey(0), x)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}


def test_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of ``postprocess.postprocess`` (mmdetection's test_cfg + bbox_coder)."""
    t, box = config.test, config.model.box_coder
    return dict(
        input_size=config.input_size,
        score_thr=t.score_thr,
        nms_pre=t.nms_pre,
        nms_iou=t.nms_iou,
        max_per_img=t.max_per_img,
        min_bbox_size=t.min_bbox_size,
        means=tuple(box.means),
        stds=tuple(box.stds),
    )


test_settings.__test__ = False  # not a pytest test
