"""Importing mmdetection PyTorch checkpoints (``.pth``) and converting them to orbax."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from ssd_jax.config import config_names
from ssd_jax.errors import InputFileError
from ssd_jax.porting.convert import (
    CheckpointMismatchError,
    flat_to_torch_name,
    is_pre_v214_layout,
    merge_strict,
    state_dict_to_flat,
    upgrade_pre_v214,
)
from ssd_jax.porting.identify import fitting_configs
from ssd_jax.porting.pth_reader import CheckpointFormatError, UnsafeCheckpointError, read_pth

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "load_checkpoint_variables",
    "read_state_dict",
]

log = logging.getLogger(__name__)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state_dict (current mmdetection key layout) and meta of a ``.pth`` file.

    Accepts ``{'meta', 'state_dict', ...}`` as mmdetection saves, or a bare state_dict;
    pre-v2.14 SSD key layouts are renamed to the current one.
    """
    obj = read_pth(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state_dict, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, Mapping):
        state_dict, meta = obj, {}
    else:
        raise CheckpointFormatError(
            f"{path}: expected a state_dict or {{'state_dict': ...}}, found a {type(obj).__name__}"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointFormatError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    state_dict = dict(state_dict)
    if is_pre_v214_layout(state_dict):
        log.info("%s: pre-v2.14 mmdetection SSD layout; renaming keys to the current layout", path)
        state_dict = upgrade_pre_v214(state_dict)
    return state_dict, dict(meta) if isinstance(meta, Mapping) else {}


def load_checkpoint_variables(
    path: str | os.PathLike,
    expected: dict,
    config: ml_collections.ConfigDict | None = None,
    **merge_kwargs: Any,
) -> dict:
    """Variables shaped like ``expected`` from a ``.pth`` file or an orbax directory.

    Raises CheckpointMismatchError listing missing, unexpected and mis-shaped keys; with
    ``config``, its first line also says which bundled config (and class count) the checkpoint
    fits instead, where its shapes tell.
    """
    from ssd_jax import checkpoints

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputFileError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        flat, _ = checkpoints.load_variables(path)
        loaded = {k: (flat_to_torch_name(k), v) for k, v in flat.items()}
    else:
        state_dict, _ = read_state_dict(path)
        loaded = state_dict_to_flat(state_dict)
    try:
        return merge_strict(loaded, expected, path, **merge_kwargs)
    except CheckpointMismatchError as e:
        if config is None:
            raise
        summary, _, details = str(e).partition("\n")
        raise CheckpointMismatchError(
            f"{summary}; {describe_fit(e.shapes, config)}\n{details}", e.shapes
        ) from None


def describe_fit(shapes: Mapping[str, tuple[int, ...]], config: ml_collections.ConfigDict) -> str:
    """A clause saying what a checkpoint that does not fit ``config`` fits instead."""
    fits = fitting_configs(shapes)
    if not fits:
        return f"it fits none of the bundled configs ({', '.join(config_names())})"
    name = config.get("name", "")
    classes = len(config.class_names)
    same = [c for n, c in fits if n == name]
    if same and same[0] is not None and same[0] != classes:
        return (
            f"it is a {name} trained for {same[0]} classes, the config (or the data) has {classes}"
        )
    return "it fits " + " or ".join(
        f"config {n}" + (f" with {c} classes" if c is not None else "") for n, c in fits
    )
