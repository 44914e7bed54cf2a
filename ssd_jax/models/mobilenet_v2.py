"""MobileNetV2 as mmdetection's backbone (widen factor 1, BN eps 1e-3, ReLU6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.init import KAIMING, ConvInit
from ssd_jax.models.layers import BatchStats, ConvModule

# (expand ratio, channels, blocks, first stride) of layer1..layer7 (mmdet arch_settings).
ARCH_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1×1 expand (unless ratio 1) → 3×3 depthwise → 1×1 linear, residual when shapes allow."""

    out_channels: int
    mid_channels: int
    stride: int
    with_expand_conv: bool
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(
            norm=True, batch_stats=self.batch_stats, dtype=self.dtype, conv_init=self.conv_init
        )
        out = x
        if self.with_expand_conv:
            out = ConvModule(self.mid_channels, 1, act="relu6", name="expand_conv", **kw)(
                out, train
            )
        out = ConvModule(
            self.mid_channels,
            3,
            self.stride,
            1,
            groups=-1,
            act="relu6",
            name="depthwise_conv",
            **kw,
        )(out, train)
        out = ConvModule(self.out_channels, 1, act="none", name="linear_conv", **kw)(out, train)
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            out = x + out
        return out


class MobileNetV2(nn.Module):
    """Returns the outputs of the layers in ``out_indices`` (0..6 = layer1..7, 7 = conv2), NHWC.

    mmdetection's SSDLite uses ``(4, 7)``: 96 channels at stride 16 and 1280 at stride 32.

    ``conv_init`` initialises the inverted residual blocks' convs (default: MobileNetV2's own
    init_cfg, Kaiming; SSDLite's config: TruncNormal std 0.03). ``conv1`` and ``conv2`` are
    always Kaiming (fan_out, relu): in mmdetection they are ConvModules directly under the
    backbone, whose own ``init_weights`` runs after the backbone's init_cfg and overrides it.
    BatchNorm: weight 1, bias 0.
    """

    out_indices: Sequence[int] = (4, 7)
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        # conv1 and conv2: KAIMING whatever ``conv_init`` says (mmcv ConvModule.init_weights).
        kw = dict(norm=True, batch_stats=self.batch_stats, dtype=self.dtype, conv_init=KAIMING)
        x = ConvModule(32, 3, 2, 1, act="relu6", name="conv1", **kw)(x, train)
        in_channels = 32
        outs = []
        for i, (ratio, channels, blocks, stride) in enumerate(ARCH_SETTINGS):
            for j in range(blocks):
                x = InvertedResidual(
                    channels,
                    int(round(in_channels * ratio)),
                    stride if j == 0 else 1,
                    ratio != 1,
                    batch_stats=self.batch_stats,
                    dtype=self.dtype,
                    conv_init=self.conv_init,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
                in_channels = channels
            if i in self.out_indices:
                outs.append(x)
            if len(outs) == len(self.out_indices):
                return outs  # the deeper layers would feed nothing
        x = ConvModule(1280, 1, act="relu6", name="conv2", **kw)(x, train)
        if len(ARCH_SETTINGS) in self.out_indices:
            outs.append(x)
        return outs
