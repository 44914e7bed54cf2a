"""A random-weight mmdetection checkpoint rebuilt from its recipe instead of stored.

``../shared/mmdet_reference/make_fixtures.py`` draws every weight from one seeded
``torch.Generator``, in state-dict order, quantised to multiples of a power of two, and then
scales each head conv by a power of two. ``scripts/make_ssd512_reference.py`` records that
recipe (key, shape, draw parameters, head factors; a few kB) while it runs make_fixtures'
functions, checks that :func:`state_dict_from_recipe` gives back the same tensors bit for bit,
and stores the recipe beside the reference outputs. A 140 MB SSD512 checkpoint is thereby a
JSON file. Needs torch (the same ``torch.randn`` stream: torch 2.13 on both sides).
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any


def state_dict_from_recipe(recipe: dict[str, Any]) -> collections.OrderedDict:
    """The checkpoint's ``state_dict`` (mmdetection key names, PyTorch layouts, float32)."""
    import torch

    gen = torch.Generator().manual_seed(recipe["seed"])
    out = collections.OrderedDict()
    for key, shape, std, step, mean in recipe["draws"]:
        normal = torch.randn(tuple(shape), generator=gen)
        q = torch.clamp(torch.round((normal * std) / step), -127, 127)
        out[key] = (q * step + mean).to(torch.float32)
    for key, factor in recipe["head_factors"].items():
        out[key] = out[key] * factor
    return out


def write_checkpoint(recipe: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """The checkpoint as mmdetection saves one (``{'meta', 'state_dict'}``, torch zip format)."""
    import torch

    meta = {"mmdet_version": recipe["mmdet"], "CLASSES": None, "epoch": 0, "iter": 0}
    torch.save({"meta": meta, "state_dict": state_dict_from_recipe(recipe)}, path)
    return path
