"""mmdetection's ``SSDHead`` convolutions (plain 3×3, or SSDLite's depthwise-separable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.init import XAVIER_UNIFORM, ConvInit
from ssd_jax.models.layers import BatchStats, ConvModule, conv


class SSDHead(nn.Module):
    """Per level: class logits (N, H, W, A·(C+1)) and box deltas (N, H, W, A·4).

    Channel ``a·(C+1)+c`` is anchor ``a``, class ``c``; class ``C`` (the last) is background.
    ``conv_init`` initialises every conv (default: SSDHead's init_cfg, Xavier uniform, bias 0;
    SSDLite's config: Normal std 0.001, bias 0); BatchNorm weight 1, bias 0.
    """

    in_channels: Sequence[int]
    num_anchors: Sequence[int]
    num_classes: int
    use_depthwise: bool = False
    norm: bool = False
    act: str = "relu"
    batch_stats: BatchStats = BatchStats()
    dtype: Any = jnp.float32
    conv_init: ConvInit = XAVIER_UNIFORM

    @nn.compact
    def __call__(
        self, feats: Sequence[jax.Array], train: bool = False
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        cls_out, reg_out = [], []
        for level, (x, num_anchors) in enumerate(zip(feats, self.num_anchors)):
            for branch, out_per_anchor, outs in (
                ("cls_convs", self.num_classes + 1, cls_out),
                ("reg_convs", 4, reg_out),
            ):
                y = x
                if self.use_depthwise:
                    y = ConvModule(
                        x.shape[-1],
                        3,
                        1,
                        1,
                        groups=-1,
                        norm=self.norm,
                        act=self.act,
                        batch_stats=self.batch_stats,
                        dtype=self.dtype,
                        conv_init=self.conv_init,
                        name=f"{branch}_{level}_0",
                    )(y, train)
                    y = conv(
                        num_anchors * out_per_anchor,
                        1,
                        dtype=self.dtype,
                        conv_init=self.conv_init,
                        name=f"{branch}_{level}_1",
                    )(y)
                else:
                    y = conv(
                        num_anchors * out_per_anchor,
                        3,
                        padding=1,
                        dtype=self.dtype,
                        conv_init=self.conv_init,
                        name=f"{branch}_{level}_0",
                    )(y)
                outs.append(y)
        return cls_out, reg_out
