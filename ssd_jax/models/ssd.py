"""The SSD detector network: backbone → neck → head, built from a config."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssd_jax.models.head import SSDHead
from ssd_jax.models.init import KAIMING, XAVIER_UNIFORM, ConvInit, conv_init
from ssd_jax.models.layers import BatchStats
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

    def __call__(
        self, x: jax.Array, train: bool = False
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        return self.bbox_head(self.features(x, train), train)


# Computation dtype per ``config.precision``. fp64 (float64 parameters and activations) is for
# parity checks against mmdetection's float64 references; it needs ``jax_enable_x64``.
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp64": jnp.float64}


def compute_dtype(precision: str) -> Any:
    """The activation dtype of ``precision``; refuses unknown names and fp64 without x64."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISIONS)}")
    if precision == "fp64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "precision 'fp64' needs 64-bit JAX: set JAX_ENABLE_X64=1 or run inside "
            "`with jax.enable_x64(True):`"
        )
    return PRECISIONS[precision]


def part_conv_init(part_cfg: ml_collections.ConfigDict, default: ConvInit) -> ConvInit:
    """The conv initialisers of ``config.model.<part>.conv_init`` (an mmengine-style init_cfg
    entry for Conv2d, see ``ssd_jax.models.init``), or the part's mmdetection default when unset."""
    spec = part_cfg.get("conv_init")
    return default if spec is None else conv_init(spec)


def build_backbone(cfg: ml_collections.ConfigDict, batch_stats: BatchStats, dtype) -> nn.Module:
    # Both backbones' default init_cfg (no pretrained weights) is Kaiming on Conv2d.
    init = part_conv_init(cfg, KAIMING)
    if cfg.type == "SSDVGG":
        return SSDVGG(dtype=dtype, conv_init=init)
    if cfg.type == "MobileNetV2":
        return MobileNetV2(
            tuple(cfg.out_indices), batch_stats=batch_stats, dtype=dtype, conv_init=init
        )
    raise ValueError(f"unknown backbone type {cfg.type!r} (expected 'SSDVGG' or 'MobileNetV2')")


def build_model(
    model_cfg: ml_collections.ConfigDict,
    num_anchors: list[int],
    batch_stats: BatchStats = BatchStats(),
    precision: str = "fp32",
) -> SSD:
    """The Flax SSD for ``config.model``; ``num_anchors`` per level comes from the anchor generator.

    ``batch_stats`` says which images train-mode BatchNorm takes its statistics over (default:
    each call's whole batch).
    ``precision`` 'bf16' computes in bfloat16 with float32 parameters (outputs are bfloat16;
    losses and NMS cast them to float32); 'fp64' in float64 with float64 parameters.
    Each part's convs are initialised as its ``conv_init`` says (mmdetection's init_cfg; the
    part's mmdetection default when absent).
    """
    dtype = compute_dtype(precision)
    n, h = model_cfg.neck, model_cfg.head
    neck = SSDNeck(
        tuple(n.in_channels),
        tuple(n.out_channels),
        tuple(n.level_strides),
        tuple(n.level_paddings),
        n.l2_norm_scale,
        n.last_kernel_size,
        n.use_depthwise,
        n.norm,
        n.act,
        batch_stats,
        dtype,
        conv_init=part_conv_init(n, XAVIER_UNIFORM),
    )
    head = SSDHead(
        tuple(n.out_channels),
        tuple(num_anchors),
        model_cfg.num_classes,
        h.use_depthwise,
        h.norm,
        h.act,
        batch_stats,
        dtype,
        conv_init=part_conv_init(h, XAVIER_UNIFORM),
    )
    return SSD(build_backbone(model_cfg.backbone, batch_stats, dtype), neck, head)
