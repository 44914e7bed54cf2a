"""Building blocks shared by the backbones, neck and head (all NHWC).

Submodule names mirror mmcv's ``ConvModule`` (``conv``, ``bn``) and
``DepthwiseSeparableConvModule`` (``depthwise_conv``, ``pointwise_conv``) so that
an mmdetection state_dict maps onto the Flax tree by a fixed rule
(see ``ssd_jax.porting.convert``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.init import KAIMING, ConvInit

# mmdetection's SSDLite sets norm_cfg=dict(type='BN', eps=0.001, momentum=0.03) (torch's
# convention: running = (1 - m)·running + m·batch).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """Which images train-mode BatchNorm takes its statistics over.

    ``group_size`` > 0: groups of that many consecutive images of this device's batch, each
    normalised by its own statistics (mmdetection's per-GPU BatchNorm, a group being one GPU's
    batch). 0: all of this device's images, and when ``axis_name`` is set those of the other
    devices too — all of them (SyncBN), or those of the device's group in ``axis_index_groups``
    (one "GPU" spread over several devices).

    The running statistics are updated with the mean of the groups' statistics, averaged over
    ``axis_name`` when set so that every device keeps the same running statistics.
    """

    group_size: int = 0
    axis_name: str | None = None
    axis_index_groups: tuple[tuple[int, ...], ...] | None = None


def param_dtype(dtype: Any) -> Any:
    """Parameters are float32 (computation in ``dtype``), float64 when computing in float64."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def product_precision(dtype: Any) -> jax.lax.Precision:
    """Precision of convolutions and matrix products: full float32 (float64) for float32
    (float64) layers. XLA's default lets GPUs use TF32 for float32 products, which on an H200
    changed SSDLite's scores by more than 1e-4 (16 of 200 mmdetection detections matched instead
    of 200, scripts/gpu_checks.py); bfloat16 layers keep the default."""
    return (
        jax.lax.Precision.DEFAULT if jnp.dtype(dtype) == jnp.bfloat16 else jax.lax.Precision.HIGHEST
    )


def accum_dtype(dtype: Any) -> Any:
    """float32, or float64 for float64 (where bf16 activations are reduced or normalised)."""
    return jnp.promote_types(dtype, jnp.float32)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "none": None,
}


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    *,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    conv_init: ConvInit = KAIMING,
    name: str | None = None,
) -> nn.Module:
    """A torch-style Conv2d: symmetric explicit padding, HWIO kernel (float32 parameters,
    float64 for float64; computation in ``dtype``), initialised by ``conv_init``."""
    if (kernel, stride, padding, dilation, groups) == (1, 1, 0, 1, 1):
        return PointwiseConv(
            features, use_bias=use_bias, dtype=dtype, conv_init=conv_init, name=name
        )
    on_cpu = groups == 1 and jax.default_backend() == "cpu"
    if on_cpu and dilation > 1 and stride == 1 and jnp.dtype(dtype) == jnp.float32:
        return TapProductConv(
            features,
            kernel,
            padding,
            dilation,
            use_bias=use_bias,
            dtype=dtype,
            conv_init=conv_init,
            name=name,
        )
    if on_cpu and (
        jnp.dtype(dtype) == jnp.float64 or (jnp.dtype(dtype) == jnp.bfloat16 and stride == 1)
    ):
        return RowProductConv(
            features,
            kernel,
            padding,
            dilation,
            use_bias=use_bias,
            dtype=dtype,
            conv_init=conv_init,
            stride=stride,
            # float64: always products (XLA:CPU's own float64 convolution is ~100× slower)
            min_channels=0 if jnp.dtype(dtype) == jnp.float64 else 256,
            name=name,
        )
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype(dtype),
        precision=product_precision(dtype),
        kernel_init=conv_init.kernel,
        bias_init=conv_init.bias,
        name=name,
    )


class PointwiseConv(nn.Module):
    """1×1 convolution, stride 1, as a matrix product over the channel axis.

    Same parameters as ``nn.Conv(features, (1, 1))`` (``kernel`` (1, 1, C_in, C_out), ``bias``);
    XLA's CPU backend runs the product and its gradients about 2× faster than the convolution.
    The product accumulates in float32 for bfloat16 (the bias is added before rounding to
    bfloat16): XLA's CPU backend hands bf16 × bf16 → f32 products to YNNPACK's AMX kernels,
    ~5× faster than float32, and upcasts bf16 × bf16 → bf16 ones to float32.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            self.conv_init.kernel,
            (1, 1, x.shape[-1], self.features),
            param_dtype(self.dtype),
        )
        acc = accum_dtype(self.dtype)
        # A product of [N·H·W, C_in] rows: its weight gradient then contracts the rows of two
        # 2-D arrays, which XLA:CPU's matmul reads in place. From the 4-D x it first copied
        # the output gradient transposed ([C_out, N·H·W]): SSDLite's layer2_0 alone spent
        # 139 ms of a 1.2 s train step in that copy.
        y = jnp.dot(
            x.reshape(-1, x.shape[-1]).astype(self.dtype),
            kernel[0, 0].astype(self.dtype),
            precision=product_precision(self.dtype),
            preferred_element_type=acc,
        ).reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            y = y + self.param(
                "bias", self.conv_init.bias, (self.features,), param_dtype(self.dtype)
            ).astype(self.dtype).astype(acc)
        return y.astype(self.dtype)


class RowProductConv(nn.Module):
    """k×k convolution on CPU as k matrix products: bfloat16 (float32 sums) and float64.

    Same parameters as ``nn.Conv(features, (k, k))`` (``kernel`` (k, k, C_in, C_out),
    ``bias``). XLA's CPU backend has no bfloat16 convolution (it converts to float32 and back),
    but hands bf16 × bf16 → f32 products to YNNPACK's AMX kernels. So each kernel row ``i``
    becomes one product of the input's k W-shifted copies, concatenated over channels
    (N, H_p, W_out, k·C_in), with that row's (k·C_in, C_out) weights; the k results are summed
    at their H offsets. The copies cost 3 bf16 passes over the input, so layers with fewer
    than ``min_channels`` input or output channels (VGG's first 4 convs: large images, few
    channels) keep the convolution. SSD300 at batch 8 on 2 AMX cores: 2.4× faster than the
    bf16 convolution, 1.7× faster than float32. In float64 (``min_channels=0``, any ``stride``)
    it replaces XLA:CPU's float64 convolution, which is ~100× slower than these products when
    lone convolutions do not go to YNNPACK (a 3×3 256→256 layer at 75×75: 13.4 s vs 0.13 s).
    """

    features: int
    kernel_size: int
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True
    dtype: Any = jnp.bfloat16
    conv_init: ConvInit = KAIMING
    min_channels: int = 256
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p, d, c = self.kernel_size, self.padding, self.dilation, x.shape[-1]
        s, precision = self.stride, product_precision(self.dtype)
        acc = accum_dtype(self.dtype)
        kernel = self.param(
            "kernel", self.conv_init.kernel, (k, k, c, self.features), param_dtype(self.dtype)
        )
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        if min(c, self.features) < self.min_channels:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                (s, s),
                ((p, p), (p, p)),
                rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=precision,
                preferred_element_type=acc,
            )
        else:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            h_out = (x.shape[1] - d * (k - 1) - 1) // s + 1
            w_out = (x.shape[2] - d * (k - 1) - 1) // s + 1
            span_h, span_w = s * (h_out - 1) + 1, s * (w_out - 1) + 1
            rows = jnp.concatenate([x[:, :, j * d : j * d + span_w : s] for j in range(k)], axis=-1)
            y = None
            for i in range(k):
                part = jnp.dot(
                    rows[:, i * d : i * d + span_h : s],
                    kernel[i].reshape(k * c, -1),
                    precision=precision,
                    preferred_element_type=acc,
                )
                y = part if y is None else y + part
        if self.use_bias:
            y = y + self.param(
                "bias", self.conv_init.bias, (self.features,), param_dtype(self.dtype)
            ).astype(self.dtype).astype(acc)
        return y.astype(self.dtype)


class TapProductConv(nn.Module):
    """Dilated k×k convolution, stride 1, on CPU as k² matrix products, one per kernel tap over
    the output positions where that tap reads the input rather than its zero padding.

    Same parameters as ``nn.Conv(features, (k, k), kernel_dilation=d)`` (``kernel`` (k, k,
    C_in, C_out), ``bias``). VGG's fc6 (3×3, dilation 6, padding 6) on SSD300's 19×19 map reads
    padding in 38 % of its multiply-adds, which XLA:CPU's convolution computes and oneDNN's
    skips: forward + backward at batch 8 took 403 ms as XLA's dilated convolution, 300 ms as
    these products, 302 ms in torch (``scripts/conv_layers_vs_torch.py``, AMD EPYC with
    AVX-512, 2026-12-07). Each tap's product is zero-padded to the output's size and the k²
    are summed. The ONNX export writes the layer as one dilated ``Conv``.
    """

    features: int
    kernel_size: int
    padding: int
    dilation: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p, d, c = self.kernel_size, self.padding, self.dilation, x.shape[-1]
        kernel = self.param(
            "kernel", self.conv_init.kernel, (k, k, c, self.features), param_dtype(self.dtype)
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        n, h, w = x.shape[:3]
        h_out, w_out = h + 2 * p - d * (k - 1), w + 2 * p - d * (k - 1)
        y = jnp.zeros((n, h_out, w_out, self.features), accum_dtype(self.dtype))
        for i in range(k):
            di, h0, h1 = _tap_span(i * d - p, h, h_out)
            for j in range(k):
                dj, w0, w1 = _tap_span(j * d - p, w, w_out)
                if h1 <= h0 or w1 <= w0:
                    continue  # this tap reads only padding
                part = jnp.dot(
                    x[:, h0 + di : h1 + di, w0 + dj : w1 + dj].reshape(-1, c),
                    kernel[i, j],
                    precision=product_precision(self.dtype),
                    preferred_element_type=accum_dtype(self.dtype),
                ).reshape(n, h1 - h0, w1 - w0, self.features)
                y = y + jnp.pad(part, ((0, 0), (h0, h_out - h1), (w0, w_out - w1), (0, 0)))
        if self.use_bias:
            y = y + self.param(
                "bias", self.conv_init.bias, (self.features,), param_dtype(self.dtype)
            ).astype(self.dtype).astype(y.dtype)
        return y.astype(self.dtype)


def _tap_span(offset: int, size: int, size_out: int) -> tuple[int, int, int]:
    """For a tap reading input position ``o + offset`` at output position ``o``: the offset and
    the output range [start, stop) where that position lies inside the input (0 ≤ · < size)."""
    return offset, max(0, -offset), min(size_out, size - offset)


class DepthwiseConv(nn.Module):
    """k×k depthwise convolution (one filter per channel), torch-style symmetric padding.

    Same parameters as ``nn.Conv(feature_group_count=C)`` (``kernel`` (k, k, 1, C), ``bias``),
    computed as a sum of k² shifted, per-channel-scaled copies of the input: XLA's CPU backend
    runs grouped convolutions (and their gradients) far slower than these elementwise ops.
    For bfloat16 the input stays bfloat16 and the sum is float32, rounded once at the end
    (XLA's CPU backend rounds each bf16 elementwise op in software: 2× slower).
    """

    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, c = self.kernel_size, self.stride, x.shape[-1]
        acc = accum_dtype(self.dtype)
        # (k, k, 1, C): fan_in k², fan_out k²·C, as torch's (C, 1, k, k) depthwise weight.
        kernel = self.param("kernel", self.conv_init.kernel, (k, k, 1, c), param_dtype(self.dtype))
        kernel = kernel.astype(self.dtype).astype(acc)
        y = depthwise(x.astype(self.dtype), kernel[:, :, 0], s, self.padding)
        if self.use_bias:
            y = y + self.param("bias", self.conv_init.bias, (c,), param_dtype(self.dtype)).astype(
                self.dtype
            ).astype(acc)
        return y.astype(self.dtype)


# Input width (pixels) from which ``depthwise`` takes the kernel gradient in one pass, chosen from
# whole train steps (scripts/compare_speed.py; README, "SSDLite's wide depthwise layers"). Alone
# (scripts/depthwise_backward.py) the one pass wins on most layers, but in the step XLA fuses
# autodiff's reductions of the small ones with their neighbours: one pass everywhere slowed the
# 128 px shapes model (0.90x). From 80 px, SSDLite 320's 160 and 80 px layers take it and the
# shapes model (at most 64 px) keeps its program.
ONE_PASS_MIN_WIDTH = 80


def depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise correlation of ``x`` (N, H, W, C) with ``kernel`` (k, k, C), zero padding
    ``padding`` on each side, computed in ``kernel``'s dtype: the sum of the k² shifted windows,
    each scaled per channel. Inputs at least ``ONE_PASS_MIN_WIDTH`` wide take their kernel
    gradient from ``depthwise_one_pass``; the value is the same either way."""
    if x.shape[2] >= ONE_PASS_MIN_WIDTH:
        return depthwise_one_pass(x, kernel, stride, padding)
    return depthwise_sum(x, kernel, stride, padding)


def _taps(x: jax.Array, k: int, stride: int, padding: int) -> list[jax.Array]:
    """The k² strided windows of zero-padded ``x`` (N, H, W, C), row-major over the taps."""
    p = padding
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h_out = (x.shape[1] - k) // stride + 1
    w_out = (x.shape[2] - k) // stride + 1
    rows, cols = stride * (h_out - 1) + 1, stride * (w_out - 1) + 1
    return [
        x[:, i : i + rows : stride, j : j + cols : stride, :] for i in range(k) for j in range(k)
    ]


def depthwise_sum(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``depthwise``'s value, differentiated by autodiff (k² reductions of window × output
    gradient for the kernel, each a pass over both arrays)."""
    k = kernel.shape[0]
    y = None
    for t, tap in enumerate(_taps(x, k, stride, padding)):
        tap = tap.astype(kernel.dtype) * kernel[t // k, t % k]
        y = tap if y is None else y + tap
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_one_pass(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``depthwise``'s value with its own kernel gradient: one variadic reduction over W gives
    all k² window × output-gradient products' row sums at once, then N and H are summed. The
    input gradient is autodiff's. Sums in another order than ``depthwise_sum``'s."""
    return depthwise_sum(x, kernel, stride, padding)


def _one_pass_fwd(x, kernel, stride, padding):
    return depthwise_sum(x, kernel, stride, padding), (x, kernel)


def _one_pass_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: depthwise_sum(x, kernel, stride, padding), x)
    (dx,) = input_vjp(g)
    k = kernel.shape[0]
    products = tuple(tap.astype(g.dtype) * g for tap in _taps(x, k, stride, padding))
    zeros = tuple(jnp.zeros((), g.dtype) for _ in products)
    rows = jax.lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    dkernel = jnp.stack([r.sum(axis=(0, 1)) for r in rows]).reshape(kernel.shape)
    return dx, dkernel.astype(kernel.dtype)


depthwise_one_pass.defvjp(_one_pass_fwd, _one_pass_bwd)


class ConvModule(nn.Module):
    """conv → optional BatchNorm → optional activation, as mmcv's ConvModule.

    With ``norm`` the conv has no bias (mmcv's ``bias='auto'``).
    ``groups=-1`` means depthwise (groups = input channels).
    ``conv_init`` initialises the conv (default: mmcv ConvModule's own Kaiming, fan_out, bias 0);
    BatchNorm starts at weight 1, bias 0 (torch's default, and mmcv's ``constant_init(norm, 1)``).
    With ``norm`` and bfloat16, BatchNorm and the activation run in float32 and the result is
    rounded once (ReLU/ReLU6 commute with rounding, so this equals rounding after the norm;
    XLA's CPU backend would otherwise round after each elementwise op, in software).
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    norm: bool = False
    act: str = "relu"
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.groups == -1:  # depthwise
            x = DepthwiseConv(
                self.kernel,
                self.stride,
                self.padding,
                use_bias=not self.norm,
                dtype=self.dtype,
                conv_init=self.conv_init,
                name="conv",
            )(x)
        else:
            x = conv(
                self.features,
                self.kernel,
                self.stride,
                self.padding,
                groups=self.groups,
                use_bias=not self.norm,
                dtype=self.dtype,
                conv_init=self.conv_init,
                name="conv",
            )(x)
        if self.norm:
            x = BatchNorm(self.batch_stats, dtype=accum_dtype(self.dtype), name="bn")(x, train)
        act = ACTIVATIONS[self.act]
        x = act(x) if act is not None else x
        return x.astype(self.dtype)


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise k×k ConvModule then pointwise 1×1 ConvModule (mmcv's module), both convs
    initialised by ``conv_init``."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    norm: bool = False
    act: str = "relu"
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(
            norm=self.norm,
            act=self.act,
            batch_stats=self.batch_stats,
            dtype=self.dtype,
            conv_init=self.conv_init,
        )
        x = ConvModule(
            x.shape[-1],
            self.kernel,
            self.stride,
            self.padding,
            groups=-1,
            name="depthwise_conv",
            **kw,
        )(x, train)
        return ConvModule(self.features, 1, name="pointwise_conv", **kw)(x, train)


class BatchNorm(nn.Module):
    """torch's ``BatchNorm2d`` over the last axis (NHWC), with the statistics of ``BatchStats``.

    Train mode normalises with the batch (group) mean and biased variance; the running mean and
    the running *unbiased* variance move by ``momentum`` (torch's convention). Eval mode uses the
    running statistics. Parameters ``scale``, ``bias``; statistics ``batch_stats/{mean, var}``
    (flax ``nn.BatchNorm``'s names). Statistics are computed in float32 (float64 for float64).
    """

    stats: BatchStats = BatchStats()
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, pdt, acc = x.shape[-1], param_dtype(self.dtype), accum_dtype(self.dtype)
        scale = self.param("scale", nn.initializers.ones, (c,), pdt)
        bias = self.param("bias", nn.initializers.zeros, (c,), pdt)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), pdt))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), pdt))
        xf = x.astype(acc)
        if not train:
            mul = jax.lax.rsqrt(running_var.value.astype(acc) + self.epsilon) * scale.astype(acc)
            y = (xf - running_mean.value.astype(acc)) * mul + bias.astype(acc)
            return y.astype(self.dtype)
        group = self.stats.group_size or x.shape[0]
        if x.shape[0] % group:
            raise ValueError(
                f"BatchNorm: batch {x.shape[0]} is not a multiple of the "
                f"statistics group size {group}"
            )
        count = group * x.shape[1] * x.shape[2]
        sync = self.stats.group_size == 0 and self.stats.axis_name is not None
        if sync:  # SyncBN (all devices, or the device's group of devices)
            count *= _group_devices(self.stats)
        y, mean, var = _train_norm(
            _SyncAxis(self.stats.axis_name, self.stats.axis_index_groups) if sync else None,
            group,
            self.epsilon,
            xf,
            scale.astype(acc),
            bias.astype(acc),
        )
        if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
            batch_mean = mean.mean(axis=0)
            batch_var = var.mean(axis=0) * count / max(count - 1, 1)  # unbiased
            if self.stats.axis_name is not None:
                batch_mean = jax.lax.pmean(batch_mean, self.stats.axis_name)
                batch_var = jax.lax.pmean(batch_var, self.stats.axis_name)
            m = self.momentum
            running_mean.value = ((1 - m) * running_mean.value + m * batch_mean).astype(pdt)
            running_var.value = ((1 - m) * running_var.value + m * batch_var).astype(pdt)
        return y.astype(self.dtype)


# How the statistics are laid out matters to XLA:CPU: the SSDLite train step (batch 8, 2 cores)
# ran 2.9× slower (1.8 against 5.3 img/s) when BatchNorm reshaped x to [G, group·H·W, C] and
# reduced axis 1 with keepdims, as from 1161366 on. x stays [N, H, W, C]: one group reduces
# (N, H, W) as flax's BatchNorm does, several sum per image over (H, W) first.
def _group_sum(v: jax.Array, num_groups: int) -> jax.Array:
    """[N, H, W, C] → [G, C]: the sum over each group of N / G consecutive images."""
    if num_groups == 1:
        return v.sum(axis=(0, 1, 2))[None]
    n, _, _, c = v.shape
    return v.sum(axis=(1, 2)).reshape(num_groups, n // num_groups, c).sum(axis=1)


def _group_mean(v: jax.Array, num_groups: int) -> jax.Array:
    """[N, H, W, C] → [G, C]: the mean over each group of N / G consecutive images."""
    return _group_sum(v, num_groups) / (v.size // v.shape[-1] // num_groups)


def _per_image(stat: jax.Array, group: int) -> jax.Array:
    """[G, C] → broadcastable against [N, H, W, C] (each group's row for its images)."""
    if stat.shape[0] == 1:
        return stat[0]
    return jnp.repeat(stat, group, axis=0)[:, None, None, :]


@dataclasses.dataclass(frozen=True)
class _SyncAxis:
    """The devices SyncBN takes its statistics over (a pmap/shard_map axis)."""

    name: str
    index_groups: tuple[tuple[int, ...], ...] | None

    def mean(self, v: jax.Array) -> jax.Array:
        return jax.lax.pmean(v, self.name, axis_index_groups=self.index_groups)


# Train-mode normalisation with its gradient written out (torch's BatchNorm backward:
# dx = scale·inv·(g - mean(g) - x̂·mean(g·x̂)) per group): two reductions of g and one
# elementwise pass. What autodiff derived from the forward took more passes over the
# activations, which XLA:CPU runs one after another (SSDLite: BatchNorm was the largest share
# of the train step). The statistics it also returns feed the running statistics only and
# carry no gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _train_norm(
    sync: _SyncAxis | None,
    group: int,
    eps: float,
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [N, H, W, C] normalised by the statistics of each group of ``group`` consecutive images
    (and of the other devices under ``sync``), then scaled and shifted: (y, mean [G, C], biased
    variance [G, C])."""
    return _train_norm_fwd(sync, group, eps, x, scale, bias)[0]


def _train_norm_fwd(sync, group, eps, x, scale, bias):
    num_groups = x.shape[0] // group
    mean = _group_mean(x, num_groups)  # [G, C]
    if sync is not None:
        mean = sync.mean(mean)
    var = _group_mean(jnp.square(x - _per_image(mean, group)), num_groups)  # two-pass
    if sync is not None:
        var = sync.mean(var)
    inv = jax.lax.rsqrt(var + eps)
    y = (x - _per_image(mean, group)) * _per_image(inv * scale, group) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _train_norm_bwd(sync, group, eps, residuals, cotangents):
    del eps
    x, mean, inv, scale = residuals
    g = cotangents[0]  # the statistics' cotangents: no gradient (see above)
    num_groups = x.shape[0] // group
    x_hat = (x - _per_image(mean, group)) * _per_image(inv, group)
    g_sums, gx_sums = _group_sum(g, num_groups), _group_sum(g * x_hat, num_groups)  # [G, C]
    count = group * x.shape[1] * x.shape[2]
    g_mean, gx_mean = g_sums / count, gx_sums / count
    if sync is not None:
        g_mean, gx_mean = sync.mean(g_mean), sync.mean(gx_mean)
    dx = _per_image(inv * scale, group) * (
        g - _per_image(g_mean, group) - x_hat * _per_image(gx_mean, group)
    )
    return dx, gx_sums.sum(axis=0), g_sums.sum(axis=0)


_train_norm.defvjp(_train_norm_fwd, _train_norm_bwd)


def _group_devices(stats: BatchStats) -> int:
    """How many devices one statistics group spans under SyncBN."""
    if stats.axis_index_groups is None:
        return jax.lax.psum(1, stats.axis_name)
    return len(stats.axis_index_groups[0])


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD's conv4_3 norm).

    ``y = weight * x / (||x||_2 + eps)`` over the channel axis, weight initialised to ``scale``
    (SSDNeck's init_cfg: ``Constant``, val = the scale, on ``l2_norm``).
    """

    scale: float = 20.0
    eps: float = 1e-10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        acc = accum_dtype(x.dtype)
        weight = self.param(
            "weight", nn.initializers.constant(self.scale), (x.shape[-1],), param_dtype(x.dtype)
        )
        norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(acc)), axis=-1, keepdims=True))
        y = weight.astype(acc) * x.astype(acc) / (norm + self.eps)
        return y.astype(x.dtype)


def max_pool_ceil(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Max pooling without padding and with torch's ``ceil_mode=True`` output size (NHWC).

    The gradient goes to the first maximum of each window in row-major order, as torch's
    ``max_pool2d`` backward sends it (ties: ReLU zeros, flat image regions).
    """
    pads = []
    for size in x.shape[1:3]:
        out = math.ceil((size - window) / stride) + 1
        # torch drops a last window that would start entirely in the padding.
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    if window == stride:
        return _tiled_max_pool(x, window, tuple(pads))
    return nn.max_pool(x, (window, window), (stride, stride), padding=tuple(pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tiled_max_pool(x: jax.Array, window: int, pads: tuple) -> jax.Array:
    """``nn.max_pool`` over non-overlapping ``window``² tiles (stride = window), ``pads`` at the
    bottom and right (−inf).

    Its own backward: autodiff of ``reduce_window`` gives XLA's select-and-scatter, which
    XLA:CPU ran 5.4× slower (SSD300's four VGG pools at batch 8, forward and backward: 1.16 s
    against 0.22 s per step; AMD EPYC with AVX-512, 2 cores, 2026-12-07).
    """
    return nn.max_pool(x, (window, window), (window, window), padding=pads)


def _tiled_max_pool_fwd(x, window, pads):
    y = _tiled_max_pool(x, window, pads)
    return y, (x, y)


def _tiled_max_pool_bwd(window, pads, residuals, g):
    x, y = residuals
    (_, pad_h), (_, pad_w) = pads
    xp = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
    n, h, w, c = xp.shape
    tiles = xp.reshape(n, h // window, window, w // window, window, c)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(window):  # row-major: torch keeps the first maximum it meets
        row = []
        for j in range(window):
            first = (tiles[:, :, i, :, j, :] == y) & ~taken
            taken = taken | first
            row.append(jnp.where(first, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(row, axis=3))  # [N, H/w, W/w, w (j), C]
    dx = jnp.stack(rows, axis=2).reshape(n, h, w, c)  # [N, H/w, w (i), W/w, w (j), C]
    return (dx[:, : x.shape[1], : x.shape[2]],)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)
