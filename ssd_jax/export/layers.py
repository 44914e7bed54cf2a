"""ONNX-friendly forms of layers that the Flax model writes for XLA's CPU backend.

Inside ``onnx_friendly_layers()`` (a Flax method interceptor; the model code is unchanged):
- ``DepthwiseConv`` — k² shifted, scaled slices of the input in the model (fast on XLA CPU)
  — becomes one grouped convolution (ONNX ``Conv`` with ``group = C``);
- eval-mode ``nn.BatchNorm`` becomes ``x · a + b`` with ``a = scale / sqrt(var + eps)`` and
  ``b = bias - mean · a`` computed from the (concrete) weights at export time.
Same parameters, same function up to float32 rounding; the graph has ~4× fewer nodes for
SSDLite, which jax2onnx converts faster and runtimes fuse (Conv + scale + Clip).
A module whose weights are not concrete (traced) keeps its own code.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.models.layers import DepthwiseConv


def _concrete(tree: Any) -> Any:
    """NumPy copies of ``tree``'s arrays; raises TypeError (TracerArrayConversionError) for
    tracers."""
    return jax.tree.map(np.asarray, tree)


def _depthwise_as_grouped_conv(module: DepthwiseConv, x: jax.Array) -> jax.Array:
    params = module.variables["params"]
    k, s, p = module.kernel_size, module.stride, module.padding
    kernel = jnp.asarray(params["kernel"], module.dtype)  # (k, k, 1, C), HWIO with groups = C
    assert kernel.shape[:2] == (k, k)
    y = jax.lax.conv_general_dilated(
        x.astype(module.dtype), kernel, window_strides=(s, s), padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
    if module.use_bias:
        y = y + jnp.asarray(params["bias"], module.dtype)
    return y


def _folded_batch_norm(module: nn.BatchNorm, x: jax.Array) -> jax.Array:
    stats = _concrete(dict(module.variables["batch_stats"]))
    params = _concrete(dict(module.variables.get("params", {})))
    inv = 1.0 / np.sqrt(stats["var"].astype(np.float64) + module.epsilon)
    a = inv * params["scale"] if module.use_scale else inv
    b = -stats["mean"] * a
    if module.use_bias:
        b = b + params["bias"]
    return x * jnp.asarray(a, x.dtype) + jnp.asarray(b, x.dtype)


def _interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
        if isinstance(module, DepthwiseConv) and len(args) == 1 and not kwargs:
            return _depthwise_as_grouped_conv(module, args[0])
        if (isinstance(module, nn.BatchNorm) and len(args) == 1 and not kwargs
                and module.use_running_average is True and module.axis in (-1, args[0].ndim - 1)
                and jnp.issubdtype(args[0].dtype, jnp.floating)):
            try:
                return _folded_batch_norm(module, args[0])
            except (TypeError, KeyError):
                pass  # weights not concrete: the module's own computation
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def onnx_friendly_layers() -> Iterator[None]:
    with nn.intercept_methods(_interceptor):
        yield
