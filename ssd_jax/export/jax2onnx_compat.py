"""Workarounds for jax2onnx 0.17.1, active only while an ONNX export traces the model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

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
