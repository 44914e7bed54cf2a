"""What a checkpoint is for: its class count and the bundled configs its tensors fit.

Both work on ``{mmdetection key: shape in Flax layout}`` (HWIO convolution kernels), as
``load_checkpoint_variables`` has it for a ``.pth`` file or an orbax directory alike:

    checkpoint_num_classes(shapes, anchors_per_cell=4)   # 80
    fitting_configs(shapes)                              # [('ssd300_coco', 80)]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import numpy as np

_CLS_LAST = re.compile(r"^bbox_head\.cls_convs\.0\.(\d+)\.bias$")

Shapes = Mapping[str, tuple[int, ...]]


def checkpoint_num_classes(shapes: Shapes, anchors_per_cell: int) -> int | None:
    """The class count a head was trained for, from the last conv of the first level's
    classification branch (A₀·(C + 1) channels, A₀ = ``anchors_per_cell``); None if unknown."""
    last = sorted((int(m.group(1)), k) for k in shapes if (m := _CLS_LAST.match(k)))
    if not last:
        return None
    channels = int(shapes[last[-1][1]][0])
    return channels // anchors_per_cell - 1 if channels % anchors_per_cell == 0 else None


@functools.cache
def config_shapes(name: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """A bundled config's ``{mmdetection key: shape (Flax layout)}`` and its first level's
    anchors per cell (computed from shapes only, nothing is compiled)."""
    from flax import traverse_util

    from ssd_jax.config import load_config
    from ssd_jax.models.assembly import anchor_generator, zero_variables
    from ssd_jax.porting.convert import flat_to_torch_name

    config = load_config(name)
    flat = traverse_util.flatten_dict(zero_variables(config))
    shapes = {flat_to_torch_name(k): tuple(np.shape(v)) for k, v in flat.items()}
    return shapes, anchor_generator(config).num_anchors[0]


def fitting_configs(shapes: Shapes) -> list[tuple[str, int | None]]:
    """Bundled configs whose network the checkpoint fits, whatever its class count:
    ``[(config name, classes its head was trained for)]``."""
    from ssd_jax.config import config_names

    have = {k: tuple(v) for k, v in shapes.items()}
    fits = []
    for name in config_names():
        try:
            want, per_cell = config_shapes(name)
        except Exception:  # noqa: BLE001 - a config that cannot be built fits nothing
            continue
        if set(want) == set(have) and all(
            want[k] == have[k] for k in want if not k.startswith("bbox_head.cls_convs")
        ):
            fits.append((name, checkpoint_num_classes(have, per_cell)))
    return fits
