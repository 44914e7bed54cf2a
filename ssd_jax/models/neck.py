"""mmdetection's ``SSDNeck``: optional L2Norm on the first level plus the extra layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.init import XAVIER_UNIFORM, ConvInit
from ssd_jax.models.layers import BatchStats, ConvModule, DepthwiseSeparableConvModule, L2Norm


class SSDNeck(nn.Module):
    """Maps the backbone's levels to ``len(out_channels)`` levels (NHWC).

    Each extra level is a 1×1 ConvModule to ``out/2`` channels then a k×k ConvModule
    (depthwise-separable for SSDLite) with that level's stride and padding; k is 3,
    or ``last_kernel_size`` for the last level (4 in SSD512).

    ``conv_init`` initialises every conv (default: SSDNeck's init_cfg, Xavier uniform, bias 0;
    SSDLite's config: TruncNormal std 0.03); BatchNorm weight 1, bias 0; L2Norm its scale.
    """

    in_channels: Sequence[int]
    out_channels: Sequence[int]
    level_strides: Sequence[int]
    level_paddings: Sequence[int]
    l2_norm_scale: float | None = 20.0
    last_kernel_size: int = 3
    use_depthwise: bool = False
    norm: bool = False
    act: str = "relu"
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = XAVIER_UNIFORM

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
        outs = list(feats)
        if self.l2_norm_scale is not None:
            outs[0] = L2Norm(self.l2_norm_scale, name="l2_norm")(outs[0])
        kw = dict(
            norm=self.norm,
            act=self.act,
            batch_stats=self.batch_stats,
            dtype=self.dtype,
            conv_init=self.conv_init,
        )
        extra = self.out_channels[len(self.in_channels) :]
        x = outs[-1]
        for i, (channels, stride, padding) in enumerate(
            zip(extra, self.level_strides, self.level_paddings)
        ):
            kernel = self.last_kernel_size if i == len(extra) - 1 else 3
            x = ConvModule(channels // 2, 1, name=f"extra_layers_{i}_0", **kw)(x, train)
            layer = DepthwiseSeparableConvModule if self.use_depthwise else ConvModule
            x = layer(channels, kernel, stride, padding, name=f"extra_layers_{i}_1", **kw)(x, train)
            outs.append(x)
        return outs
