"""Loading ``configs/*.py`` files (``get_config()`` → ConfigDict) with ``key=value`` overrides.

Scripts use ml_collections' ``config_flags`` (``--config path --config.key=value``); this module
is the same for library code such as ``Detector.from_checkpoint``.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from typing import Any, Iterable

import ml_collections


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of the Python file at ``path`` and apply ``key.sub=value`` overrides."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    # Config files import their siblings as ``from configs import ...``.
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_ssd_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config()
    for item in overrides:
        key, _, value = item.partition("=")
        set_by_path(config, key.lstrip("-").removeprefix("config."), _parse(value))
    return config


def _parse(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def set_by_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set ``config.a.b = value``; an unknown key is refused with the nearest valid name."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            prefix = ".".join(parts[:i])
            names = ([f"{prefix}.{k}" if prefix else k for k in node.keys()]
                     if hasattr(node, "keys") else [])
            close = difflib.get_close_matches(".".join(parts[:i + 1]), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def _get_by_path(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


# (key, test, requirement) for validate_config; a test is False for NaN and for non-numbers.
_RANGES = (
    ("input_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("optimizer.lr", lambda v: _is_real(v) and 0 < v < float("inf"), "> 0 and finite"),
    ("optimizer.weight_decay", lambda v: _is_real(v) and 0 <= v < float("inf"),
     ">= 0 and finite"),
    ("optimizer.momentum", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
    ("train.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("train.max_boxes", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("test.score_thr", lambda v: _is_real(v) and 0 <= v <= 1, "in [0, 1]"),
    ("test.nms_iou", lambda v: _is_real(v) and 0 < v <= 1, "in (0, 1]"),
)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN != NaN


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Refuse values out of range before anything is built: raises ValueError listing each one.

    Checked: input_size > 0; optimizer.lr > 0; optimizer.weight_decay >= 0; optimizer.momentum
    in [0, 1); train.batch_size > 0; train.max_boxes >= 1; test.score_thr in [0, 1];
    test.nms_iou in (0, 1]. NaN, infinities (lr, weight decay), booleans, strings and floats
    where an integer is needed are refused too. A key the config does not have is skipped.
    """
    problems = []
    for key, ok, requirement in _RANGES:
        try:
            value = _get_by_path(config, key)
        except (KeyError, AttributeError, TypeError):
            continue
        if not ok(value):
            problems.append(f"{key}={value!r} must be {requirement}")
    if problems:
        name = config.get("name", "config") if hasattr(config, "get") else "config"
        raise ValueError(f"invalid {name} settings: " + "; ".join(problems))


def check_batch_divisible(batch_size: int, num_devices: int) -> None:
    """Refuse a global batch that does not split evenly over ``num_devices`` (all processes').

    Raises ValueError naming both numbers and the nearest valid batch sizes.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if batch_size < 1 or batch_size % num_devices:
        below = batch_size // num_devices * num_devices
        above = below + num_devices
        options = " or ".join(str(b) for b in (below, above) if b > 0)
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the {num_devices} "
                         f"devices: use a multiple of {num_devices}, e.g. {options}")
