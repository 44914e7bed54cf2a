"""ONNX-friendly forms of layers that the Flax model writes for XLA's CPU backend.

Inside ``onnx_friendly_layers()`` (a Flax method interceptor; the model code is unchanged),
``DepthwiseConv`` — in the model k² shifted, per-channel-scaled slices of the input, fast on
XLA's CPU backend — becomes one grouped convolution (ONNX ``Conv`` with ``group = C``). Same
parameters, same function up to float32 rounding. For SSDLite the traced graph shrinks from
2,206 to 681 equations: jax2onnx 0.17.1 converts in time quadratic in that count (30–40 s
of CPU before, 3 s after), and runtimes get Conv nodes they can fuse. (jax2onnx lowers eval-mode
``nn.BatchNorm`` to ONNX ``BatchNormalization`` by itself.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.layers import DepthwiseConv


def _depthwise_as_grouped_conv(module: DepthwiseConv, x: jax.Array) -> jax.Array:
    params = module.variables["params"]
    k, s, p = module.kernel_size, module.stride, module.padding
    kernel = jnp.asarray(params["kernel"], module.dtype)  # (k, k, 1, C), HWIO with groups = C
    assert kernel.shape[:2] == (k, k)
    y = jax.lax.conv_general_dilated(
        x.astype(module.dtype),
        kernel,
        window_strides=(s, s),
        padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )
    if module.use_bias:
        y = y + jnp.asarray(params["bias"], module.dtype)
    return y


def _interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
        if isinstance(module, DepthwiseConv) and len(args) == 1 and not kwargs:
            return _depthwise_as_grouped_conv(module, args[0])
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def onnx_friendly_layers() -> Iterator[None]:
    with nn.intercept_methods(_interceptor):
        yield
