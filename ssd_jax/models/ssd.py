"""The SSD detector network: backbone → neck → head, built from a config."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections

from ssd_jax.models.head import SSDHead
from ssd_jax.models.mobilenet_v2 import MobileNetV2
from ssd_jax.models.neck import SSDNeck
from ssd_jax.models.vgg import SSDVGG


class SSD(nn.Module):
    """Input (N, S, S, 3) normalised float; output per-level class logits and box deltas (NHWC)."""
    backbone: nn.Module
    neck: nn.Module
    bbox_head: nn.Module

    def features(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        """The neck's outputs per level, (N, H_l, W_l, C_l)."""
        return self.neck(self.backbone(x, train), train)

    def __call__(self, x: jax.Array, train: bool = False
                 ) -> tuple[list[jax.Array], list[jax.Array]]:
        return self.bbox_head(self.features(x, train), train)


def build_backbone(cfg: ml_collections.ConfigDict, bn_axis_name: Optional[str]) -> nn.Module:
    if cfg.type == "SSDVGG":
        return SSDVGG()
    if cfg.type == "MobileNetV2":
        return MobileNetV2(tuple(cfg.out_indices), bn_axis_name=bn_axis_name)
    raise ValueError(f"unknown backbone type {cfg.type!r} (expected 'SSDVGG' or 'MobileNetV2')")


def build_model(model_cfg: ml_collections.ConfigDict, num_anchors: list[int],
                bn_axis_name: Optional[str] = None) -> SSD:
    """The Flax SSD for ``config.model``; ``num_anchors`` per level comes from the anchor generator.

    ``bn_axis_name`` names the pmap axis over which BatchNorm statistics are averaged (SyncBN).
    """
    n, h = model_cfg.neck, model_cfg.head
    neck = SSDNeck(tuple(n.in_channels), tuple(n.out_channels), tuple(n.level_strides),
                   tuple(n.level_paddings), n.l2_norm_scale, n.last_kernel_size,
                   n.use_depthwise, n.norm, n.act, bn_axis_name)
    head = SSDHead(tuple(n.out_channels), tuple(num_anchors), model_cfg.num_classes,
                   h.use_depthwise, h.norm, h.act, bn_axis_name)
    return SSD(build_backbone(model_cfg.backbone, bn_axis_name), neck, head)
