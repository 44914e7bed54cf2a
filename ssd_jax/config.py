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
