"""DeltaXYWH box coding (mmdetection's ``DeltaXYWHBBoxCoder``), boxes xyxy in pixels."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

# mmdetection: wh_ratio_clip = 16 / 1000 bounds |dw|, |dh| by |log(0.016)| before exp.
WH_RATIO_CLIP = 16 / 1000


def encode(
    anchors: jnp.ndarray,
    gt: jnp.ndarray,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> jnp.ndarray:
    """Deltas (..., 4) = ((gx-px)/pw, (gy-py)/ph, log(gw/pw), log(gh/ph)), normalised by
    means/stds."""
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    px = (anchors[..., 0] + anchors[..., 2]) * 0.5
    py = (anchors[..., 1] + anchors[..., 3]) * 0.5
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], -1)
    return (deltas - jnp.asarray(means, deltas.dtype)) / jnp.asarray(stds, deltas.dtype)


def decode(
    anchors: jnp.ndarray,
    deltas: jnp.ndarray,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    max_shape: tuple[int, int] | None = None,
) -> jnp.ndarray:
    """Boxes (..., 4) xyxy from anchors and deltas; dw, dh clamped; clipped to max_shape (h, w)."""
    d = deltas * jnp.asarray(stds, deltas.dtype) + jnp.asarray(means, deltas.dtype)
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    max_ratio = float(np.abs(np.log(WH_RATIO_CLIP)))
    gxy = pxy + pwh * d[..., :2]
    gwh = pwh * jnp.exp(jnp.clip(d[..., 2:], -max_ratio, max_ratio))
    boxes = jnp.concatenate([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)
    if max_shape is not None:
        h, w = max_shape
        boxes = jnp.clip(boxes, 0.0, jnp.asarray([w, h, w, h], boxes.dtype))
    return boxes
