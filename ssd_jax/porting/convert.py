"""mmdetection state_dict ↔ Flax variables, strictly checked against the config's model.

Mapping rule (the Flax modules are named for it): a torch key ``a.b.0.1.c.weight`` becomes the
Flax path ``a / b_0_1 / c / <leaf>`` — numeric parts join the name before them — where the leaf
is ``kernel`` for a conv weight (OIHW → HWIO), ``scale`` / ``bias`` for BatchNorm's affine
parameters, ``mean`` / ``var`` (in ``batch_stats``) for its running statistics, and unchanged
otherwise (L2Norm's ``weight``). ``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssd_jax.errors import UserError

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}

# Checkpoints written before mmdetection v2.14 kept the extra layers and L2Norm in the backbone
# and had single-layer head branches (tools/model_converters/upgrade_ssd_version.py).
_OLD_EXTRA = re.compile(r"^backbone\.extra\.(\d+)\.(weight|bias)$")
_OLD_HEAD = re.compile(r"^bbox_head\.(cls_convs|reg_convs)\.(\d+)\.(weight|bias)$")


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's tensors do not fit the config's model; the message's first line says so in
    short (and, where it can be told, which config it fits), the next lines list the keys.
    ``shapes``: the checkpoint's ``{mmdetection key: shape (Flax layout)}``."""

    def __init__(self, message: str, shapes: Mapping[str, tuple[int, ...]] | None = None):
        super().__init__(message)
        self.shapes = dict(shapes or {})


def is_pre_v214_layout(state_dict: Mapping[str, np.ndarray]) -> bool:
    """True for an SSD state_dict in the layout of mmdetection before v2.14."""
    return any(
        _OLD_EXTRA.match(k) or k == "backbone.l2_norm.weight" or _OLD_HEAD.match(k)
        for k in state_dict
    )


def upgrade_pre_v214(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename pre-v2.14 SSD keys to the current layout (extra conv k → extra_layers.k//2.k%2)."""
    out = {}
    for key, value in state_dict.items():
        if m := _OLD_EXTRA.match(key):
            idx = int(m.group(1))
            key = f"neck.extra_layers.{idx // 2}.{idx % 2}.conv.{m.group(2)}"
        elif key == "backbone.l2_norm.weight":
            key = "neck.l2_norm.weight"
        elif m := _OLD_HEAD.match(key):
            key = f"bbox_head.{m.group(1)}.{m.group(2)}.0.{m.group(3)}"
        out[key] = value
    return out


def _module_path(parts: list[str]) -> tuple[str, ...]:
    path: list[str] = []
    for part in parts:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path)


def torch_to_flax_name(
    key: str, state_dict: Mapping[str, Any]
) -> tuple[str, tuple[str, ...]] | None:
    """(collection, Flax path) of a torch key, or None for keys with no Flax counterpart."""
    *module, leaf = key.split(".")
    prefix = ".".join(module)
    path = _module_path(module)
    is_bn = f"{prefix}.running_mean" in state_dict
    if leaf == "num_batches_tracked":
        return None
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", path + ({"running_mean": "mean", "running_var": "var"}[leaf],)
    if leaf == "weight" and is_bn:
        return "params", path + ("scale",)
    if leaf == "weight" and np.ndim(state_dict[key]) == 4:
        return "params", path + ("kernel",)
    return "params", path + (leaf,)


def state_dict_to_flat(
    state_dict: Mapping[str, np.ndarray],
) -> dict[tuple[str, ...], tuple[str, np.ndarray]]:
    """Flat ``{(collection, *path): (torch_key, array in Flax layout)}``."""
    flat = {}
    for key, value in state_dict.items():
        target = torch_to_flax_name(key, state_dict)
        if target is None:
            continue
        value = np.asarray(value)
        if value.ndim == 4:  # OIHW → HWIO (depthwise: (C, 1, kh, kw) → (kh, kw, 1, C))
            value = value.transpose(2, 3, 1, 0)
        flat[(target[0],) + target[1]] = (key, value)
    return flat


def flat_to_torch_name(path: tuple[str, ...]) -> str:
    """A readable torch-style name for a Flax path (for error messages)."""
    collection, *parts = path
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "mean": "running_mean",
        "var": "running_var",
    }.get(parts[-1], parts[-1])
    return ".".join(re.sub(r"_(\d+)", r".\1", p) for p in parts[:-1]) + "." + leaf


def merge_strict(
    loaded: Mapping[tuple[str, ...], tuple[str, np.ndarray]],
    expected: Variables,
    source: str,
    allow_missing_prefixes: tuple[str, ...] = (),
    ignore_prefixes: tuple[str, ...] = (),
) -> Variables:
    """Variables with ``expected``'s tree filled from ``loaded``; refuse any mismatch.

    ``allow_missing_prefixes``: top-level modules (e.g. ``('bbox_head',)``) whose variables keep
    their ``expected`` values when absent from the checkpoint. ``ignore_prefixes``: checkpoint
    entries under these top-level modules are left out (e.g. a head being re-initialised).
    """
    from flax import traverse_util  # JAX's import (a second) only when a checkpoint is read

    want = traverse_util.flatten_dict(expected)
    loaded = {k: v for k, v in loaded.items() if not _under(k[1:], ignore_prefixes)}
    missing = sorted(
        k for k in want if k not in loaded and not _under(k[1:], allow_missing_prefixes)
    )
    unexpected = sorted(v[0] for k, v in loaded.items() if k not in want)
    mis_shaped = sorted(
        f"{v[0]}: checkpoint {tuple(v[1].shape)} vs model {tuple(np.shape(want[k]))} (Flax layout)"
        for k, v in loaded.items()
        if k in want and tuple(v[1].shape) != tuple(np.shape(want[k]))
    )
    if missing or unexpected or mis_shaped:
        counts = ", ".join(
            f"{len(keys)} {title}"
            for title, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", mis_shaped),
            )
            if keys
        )
        lines = [f"checkpoint {source} does not fit the config's model ({counts} keys)"]
        for title, keys in (
            ("missing", sorted(flat_to_torch_name(k) for k in missing)),
            ("unexpected", unexpected),
            ("mis-shaped", mis_shaped),
        ):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {title} ({len(keys)}): " + "\n      ".join(shown))
        raise CheckpointMismatchError(
            "\n".join(lines), {v[0]: tuple(np.shape(v[1])) for v in loaded.values()}
        )
    merged = {
        k: (np.asarray(loaded[k][1], dtype=np.asarray(v).dtype) if k in loaded else v)
        for k, v in want.items()
    }
    out = traverse_util.unflatten_dict(merged)
    return {collection: out.get(collection, {}) for collection in expected}


def _under(path: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    """Whether a Flax path (without its collection) lies under one of the module names."""
    return bool(path) and path[0] in prefixes
