"""Workarounds for jax2onnx 0.17.1, active only while an ONNX export traces the model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp


@contextlib.contextmanager
def explicit_pads_for_max_pool() -> Iterator[None]:
    """Let jax2onnx's ``flax.linen.max_pool`` shim take SSDVGG's calls.

    jax2onnx 0.17.1 swaps ``nn.max_pool`` for a shim (lowered to a 2-D ONNX MaxPool) that takes
    keyword arguments and 'SAME'/'VALID' padding only; SSDVGG calls it positionally with
    explicit pads (torch's ceil mode). Without the shim it traces to ``reduce_window_max``,
    which jax2onnx lowers to a 4-D MaxPool over NHWC that ONNX Runtime and OpenVINO reject.
    This wraps the shim: explicit pads become a ``-inf`` Pad, then 'VALID' pooling.
    """
    from jax2onnx.plugins.flax.linen.max_pool import MaxPoolPlugin

    saved = MaxPoolPlugin.__dict__["_make_patch"]
    make_shim = saved.__func__

    def make_patch(cls, orig):
        shim = make_shim(cls, orig)

        def max_pool(x, window_shape, strides=None, padding="VALID"):
            if not isinstance(padding, str):
                pads = [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)]
                x = jnp.pad(x, pads, constant_values=-jnp.inf)
                padding = "VALID"
            return shim(x, window_shape=tuple(window_shape), strides=strides, padding=padding)

        return max_pool

    MaxPoolPlugin._make_patch = classmethod(make_patch)
    try:
        yield
    finally:
        MaxPoolPlugin._make_patch = saved


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """jax2onnx logs a warning per optional plugin it cannot import (equinox, dm_pix examples:
    not installed, not used) and per value without a type; the export's own errors still raise."""
    loggers = [logging.getLogger(n) for n in ("jax2onnx", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def relu6_as_clip(model: Any) -> int:
    """Rewrite jax2onnx's ``relu6`` (``Min(Max(x, 0), 6)``) as one ONNX ``Clip(x, 0, 6)``, in
    place; returns how many were rewritten.

    ONNX Runtime fuses ``Conv`` + ``Clip`` into one blocked convolution, but not
    ``Conv`` + ``Max`` + ``Min``: around each unfused activation it converts the blocked layout
    back and forth, and SSDLite ran 2× slower than with the same graph using Clip.
    """
    from onnx import helper, numpy_helper

    scalars = {
        init.name: float(numpy_helper.to_array(init))
        for init in model.graph.initializer
        if not init.dims
    }
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}

    def split(node, bound: float) -> tuple[str, str] | None:
        """(tensor input, constant input) of a two-input node whose constant is ``bound``."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        if scalars.get(b) == bound and a not in scalars:
            return a, b
        if scalars.get(a) == bound and b not in scalars:
            return b, a
        return None

    replaced: dict[int, Any] = {}  # id(Max node) -> Clip node
    dropped: set[int] = set()  # id(Min node)
    for node in model.graph.node:
        low = split(node, 0.0) if node.op_type == "Max" else None
        users = consumers.get(node.output[0], []) if low else []
        if not low or len(users) != 1 or node.output[0] in graph_outputs:
            continue
        high = split(users[0], 6.0) if users[0].op_type == "Min" else None
        if not high or high[0] != node.output[0]:
            continue
        replaced[id(node)] = helper.make_node(
            "Clip", [low[0], low[1], high[1]], list(users[0].output), name=f"{node.name}_clip"
        )
        dropped.add(id(users[0]))
    nodes = [replaced.get(id(n), n) for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(replaced)
