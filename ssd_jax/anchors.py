"""SSD prior boxes exactly as mmdetection's ``SSDAnchorGenerator`` makes them.

Anchors are xyxy in input pixels. Within a level they are ordered (y, x, a): row-major over
feature-map cells, then the A anchors of a cell, which is also how the head's channels
``a·K + k`` map to anchors. At a cell the anchors are: ratio 1 at ``min_size``, ratio 1 at
``sqrt(min_size·max_size)``, then ratios 1/r, r for each r of the level at ``min_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ssd_anchor_sizes(
    input_size: int, basesize_ratio_range: Sequence[float], num_levels: int
) -> tuple[list[int], list[int]]:
    """min/max anchor sizes per level from mmdetection's basesize-ratio rule (SSD300/SSD512)."""
    min_ratio, max_ratio = (int(r * 100) for r in basesize_ratio_range)
    step = int(np.floor(max_ratio - min_ratio) / (num_levels - 2))
    min_sizes, max_sizes = [], []
    for ratio in range(min_ratio, max_ratio + 1, step):
        min_sizes.append(int(input_size * ratio / 100))
        max_sizes.append(int(input_size * (ratio + step) / 100))
    # The first level's sizes are set by hand in mmdetection (COCO and VOC variants).
    first = {
        (300, 0.15): (7, 15),
        (300, 0.2): (10, 20),
        (512, 0.1): (4, 10),
        (512, 0.15): (7, 15),
    }.get((input_size, round(basesize_ratio_range[0], 4)))
    if first is None:
        raise ValueError(
            f"SSD anchors: no first-level rule for input_size={input_size} with "
            f"basesize_ratio_range={tuple(basesize_ratio_range)}; give min_sizes/max_sizes"
        )
    min_sizes.insert(0, int(input_size * first[0] / 100))
    max_sizes.insert(0, int(input_size * first[1] / 100))
    if len(min_sizes) != num_levels:
        raise ValueError(
            f"SSD anchors: the size rule gives {len(min_sizes)} levels, "
            f"the config has {num_levels} strides"
        )
    return min_sizes, max_sizes


class SSDAnchorGenerator:
    """Anchors per level for a square SSD input; ``num_anchors[l]`` = 2 + 2·len(ratios[l])."""

    def __init__(
        self,
        input_size: int,
        strides: Sequence[int],
        ratios: Sequence[Sequence[float]],
        basesize_ratio_range: Sequence[float] | None = None,
        min_sizes: Sequence[float] | None = None,
        max_sizes: Sequence[float] | None = None,
    ):
        if min_sizes is None or max_sizes is None:
            min_sizes, max_sizes = ssd_anchor_sizes(input_size, basesize_ratio_range, len(strides))
        if not len(min_sizes) == len(max_sizes) == len(strides) == len(ratios):
            raise ValueError(
                "SSD anchors: strides, ratios, min_sizes and max_sizes differ in length"
            )
        self.input_size = input_size
        self.strides = list(strides)
        self.base_anchors = [
            self._base_anchors(s, lo, hi, r)
            for s, lo, hi, r in zip(strides, min_sizes, max_sizes, ratios)
        ]

    @property
    def num_anchors(self) -> list[int]:
        return [len(b) for b in self.base_anchors]

    @staticmethod
    def _base_anchors(
        stride: float, min_size: float, max_size: float, ratios: Sequence[float]
    ) -> np.ndarray:
        """(A, 4) anchors of the cell at the origin, centred at stride/2 (float32 as torch)."""
        scales = np.array([1.0, np.sqrt(max_size / min_size)], np.float32)
        aspect = [1.0]
        for r in ratios:
            aspect += [1.0 / r, r]
        h_ratios = np.sqrt(np.array(aspect, np.float32))
        w_ratios = np.float32(1) / h_ratios
        # scale_major=False: index = scale * len(aspect) + ratio.
        ws = (np.float32(min_size) * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (np.float32(min_size) * scales[:, None] * h_ratios[None, :]).reshape(-1)
        c = np.float32(stride / 2.0)
        anchors = np.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], axis=-1)
        # Keep scale 0 at every ratio plus the larger square (scale 1, ratio 1) in second place.
        order = list(range(len(aspect)))
        order.insert(1, len(aspect))
        return anchors[order].astype(np.float32)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Per level (H·W·A, 4) float32 xyxy anchors in input pixels, order (y, x, a)."""
        out = []
        for (h, w), stride, base in zip(featmap_sizes, self.strides, self.base_anchors):
            xs = np.arange(w, dtype=np.float32) * np.float32(stride)
            ys = np.arange(h, dtype=np.float32) * np.float32(stride)
            xx, yy = np.meshgrid(xs, ys)  # (H, W)
            shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
            out.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
        return out
