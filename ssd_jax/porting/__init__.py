"""Importing mmdetection PyTorch checkpoints (``.pth``) and converting them to orbax."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from ssd_jax.porting.convert import (CheckpointMismatchError, is_pre_v214_layout, merge_strict,
                                     state_dict_to_flat, upgrade_pre_v214)
from ssd_jax.porting.pth_reader import CheckpointFormatError, UnsafeCheckpointError, read_pth

__all__ = ["CheckpointFormatError", "CheckpointMismatchError", "UnsafeCheckpointError",
           "load_checkpoint_variables", "read_state_dict"]

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
        raise CheckpointFormatError(f"{path}: expected a state_dict or {{'state_dict': ...}}, "
                                    f"found a {type(obj).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointFormatError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    state_dict = dict(state_dict)
    if is_pre_v214_layout(state_dict):
        log.info("%s: pre-v2.14 mmdetection SSD layout; renaming keys to the current layout", path)
        state_dict = upgrade_pre_v214(state_dict)
    return state_dict, dict(meta) if isinstance(meta, Mapping) else {}


def load_checkpoint_variables(path: str | os.PathLike, expected: dict, **merge_kwargs: Any) -> dict:
    """Variables shaped like ``expected`` from a ``.pth`` file or an orbax directory.

    Raises CheckpointMismatchError listing missing, unexpected and mis-shaped keys.
    """
    from ssd_jax import checkpoints
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        flat, _ = checkpoints.load_variables(path)
        from ssd_jax.porting.convert import flat_to_torch_name
        loaded = {k: (flat_to_torch_name(k), v) for k, v in flat.items()}
    else:
        state_dict, _ = read_state_dict(path)
        loaded = state_dict_to_flat(state_dict)
    return merge_strict(loaded, expected, path, **merge_kwargs)
