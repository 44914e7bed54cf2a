"""ONNX-friendly forms of layers that the Flax model writes for XLA's CPU backend.

Inside ``onnx_friendly_layers()`` (a Flax method interceptor; the model code is unchanged),
every convolution becomes one ONNX ``Conv``, as ``torch.onnx.export`` writes mmdetection's
model:

- ``DepthwiseConv`` (in the model k² shifted, per-channel-scaled slices of the input, fast on
  XLA's CPU backend) becomes a grouped convolution (``group = C``). For SSDLite the traced
  graph shrinks from 2,206 to 681 equations: jax2onnx 0.17.1 converts in time quadratic in that
  count (30–40 s of CPU before, 3 s after).
- ``PointwiseConv`` (a matrix product in the model) becomes a 1×1 convolution.
- ``TapProductConv`` (VGG's dilated fc6 as k² matrix products on CPU) becomes one dilated
  convolution.
- An eval-mode ``ConvModule`` with BatchNorm becomes one convolution with the BatchNorm folded
  into its kernel and bias (``s = scale / sqrt(var + eps)``: kernel·s, bias − mean·s), then
  its activation. Exported as written, each BatchNorm was ~8 elementwise nodes over the
  activations, and ONNX Runtime ran our SSDLite graph 4.5× slower than mmdetection's.

Same parameters, same function up to float32 rounding (folding is what ``torch.onnx`` does too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.models.layers import (
    ACTIVATIONS,
    BN_EPS,
    ConvModule,
    DepthwiseConv,
    PointwiseConv,
    TapProductConv,
)


def _conv_nhwc(
    x: jax.Array,
    kernel: jax.Array | np.ndarray,
    bias: jax.Array | np.ndarray | None,
    stride: int,
    padding: int,
    groups: int = 1,
    dilation: int = 1,
) -> jax.Array:
    """One convolution: x NHWC, kernel HWIO (I = C_in / groups), bias (C_out,) or None."""
    y = jax.lax.conv_general_dilated(
        x,
        jnp.asarray(kernel, x.dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    return y if bias is None else y + jnp.asarray(bias, x.dtype)


def _depthwise_as_grouped_conv(module: DepthwiseConv, x: jax.Array) -> jax.Array:
    params = module.variables["params"]
    kernel = jnp.asarray(params["kernel"])  # (k, k, 1, C), HWIO with groups = C
    assert kernel.shape[:2] == (module.kernel_size, module.kernel_size)
    bias = params["bias"] if module.use_bias else None
    x = x.astype(module.dtype)
    return _conv_nhwc(x, kernel, bias, module.stride, module.padding, groups=x.shape[-1])


def _pointwise_as_conv(module: PointwiseConv, x: jax.Array) -> jax.Array:
    params = module.variables["params"]
    bias = params["bias"] if module.use_bias else None
    return _conv_nhwc(x.astype(module.dtype), jnp.asarray(params["kernel"]), bias, 1, 0)


def _taps_as_dilated_conv(module: TapProductConv, x: jax.Array) -> jax.Array:
    params = module.variables["params"]
    bias = params["bias"] if module.use_bias else None
    kernel = jnp.asarray(params["kernel"])
    x = x.astype(module.dtype)
    return _conv_nhwc(x, kernel, bias, 1, module.padding, dilation=module.dilation)


def _conv_bn_folded(module: ConvModule, x: jax.Array) -> jax.Array:
    """An eval-mode ``ConvModule`` with BatchNorm as one convolution (+ its activation)."""
    params, stats = module.variables["params"], module.variables["batch_stats"]["bn"]
    bn = params["bn"]
    # The weights are concrete here (closed over by the exported function): fold them in NumPy
    # (float64, then rounded once), so that the graph holds the folded constants only.
    as64 = lambda a: np.asarray(a, np.float64)
    s = as64(bn["scale"]) / np.sqrt(as64(stats["var"]) + BN_EPS)
    dtype = np.asarray(params["conv"]["kernel"]).dtype
    kernel = (as64(params["conv"]["kernel"]) * s).astype(dtype)  # out channel: HWIO's last axis
    bias = (as64(bn["bias"]) - as64(stats["mean"]) * s).astype(dtype)
    groups = x.shape[-1] if module.groups == -1 else module.groups
    y = _conv_nhwc(
        x.astype(module.dtype), kernel, bias, module.stride, module.padding, groups=groups
    )
    act = ACTIVATIONS[module.act]
    return (act(y) if act is not None else y).astype(module.dtype)


def _interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
        if isinstance(module, ConvModule) and module.norm and _eval_mode(args, kwargs):
            return _conv_bn_folded(module, args[0])
        if isinstance(module, DepthwiseConv) and len(args) == 1 and not kwargs:
            return _depthwise_as_grouped_conv(module, args[0])
        if isinstance(module, PointwiseConv) and len(args) == 1 and not kwargs:
            return _pointwise_as_conv(module, args[0])
        if isinstance(module, TapProductConv) and len(args) == 1 and not kwargs:
            return _taps_as_dilated_conv(module, args[0])
    return next_fun(*args, **kwargs)


def _eval_mode(args: tuple, kwargs: dict) -> bool:
    train = kwargs.get("train", args[1] if len(args) > 1 else False)
    return train is False


@contextlib.contextmanager
def onnx_friendly_layers() -> Iterator[None]:
    with nn.intercept_methods(_interceptor):
        yield
