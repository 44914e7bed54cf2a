"""Caffe-style VGG16 as mmdetection's ``SSDVGG`` (depth 16, ceil-mode pools, no last pool).

Conv names are the torch ``features.N`` indices (``features_N``) so that
``backbone.features.N.*`` keys of an mmdetection checkpoint (or of the ImageNet
``vgg16_caffe`` weights) map onto them directly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.init import KAIMING, ConvInit
from ssd_jax.models.layers import conv, max_pool_ceil

# (convs per stage, channels) for VGG16; each conv is followed by a ReLU and each
# stage but the last by a 2×2/2 ceil-mode max pool (mmcv VGG, with_last_pool=False).
VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class SSDVGG(nn.Module):
    """Returns ``[relu4_3, relu7]``: (N, H/8, W/8, 512) and (N, H/16, W/16, 1024), NHWC.

    ``conv_init`` initialises every conv. The default is SSDVGG's own init_cfg, which mmdetection
    applies when no pretrained weights are given: Kaiming normal (fan_out, relu), bias 0.
    mmdetection's SSD300/512 configs instead load ``open-mmlab://vgg16_caffe``
    (``train.pretrained_backbone``).
    """

    dtype: Any = jnp.float32
    conv_init: ConvInit = KAIMING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        del train  # no BatchNorm or dropout
        outs = []
        idx = 0  # index into torch's nn.Sequential ``features``
        for stage, (num_convs, channels) in enumerate(VGG16_STAGES):
            for _ in range(num_convs):
                x = nn.relu(
                    conv(
                        channels,
                        3,
                        padding=1,
                        dtype=self.dtype,
                        conv_init=self.conv_init,
                        name=f"features_{idx}",
                    )(x)
                )
                idx += 2  # conv, relu
            if stage == 3:
                outs.append(x)  # relu4_3 (features index 22)
            if stage < len(VGG16_STAGES) - 1:
                x = max_pool_ceil(x, 2, 2)
                idx += 1
        # pool5 3×3/1 pad 1, then fc6 (dilated 3×3) and fc7 (1×1) as convolutions.
        x = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        idx += 1
        x = nn.relu(
            conv(
                1024,
                3,
                padding=6,
                dilation=6,
                dtype=self.dtype,
                conv_init=self.conv_init,
                name=f"features_{idx}",
            )(x)
        )
        x = nn.relu(
            conv(1024, 1, dtype=self.dtype, conv_init=self.conv_init, name=f"features_{idx + 2}")(x)
        )
        outs.append(x)  # relu7 (features index 34)
        return outs
