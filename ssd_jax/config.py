"""Config files (``configs/*.py``, ``get_config()`` → ConfigDict): loading, overrides, checks.

    config = load_config("configs/ssd300_coco.py", ["train.batch_size=32"])
    config = load_config("ssd300_coco")     # a bundled config by name
    c = base_config(__file__, "ssd300_coco")  # inside a config file: a sibling's get_config()

Overrides are ``key.sub=value`` (values parsed as Python literals, else kept as strings). An
unknown key is refused with the nearest valid keys, searched over every dotted key, every leaf
name and common aliases (``lerning_rate`` → ``optimizer.lr``).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections

from ssd_jax.errors import ConfigError, InputFileError, UnknownConfigKeyError

# Where bundled configs live: the repository's configs/ (a source checkout) or, installed with
# pip, the package's configs/ (pyproject.toml maps the one onto the other).
_CONFIG_DIRS = (
    pathlib.Path(__file__).resolve().parent / "configs",
    pathlib.Path(__file__).resolve().parents[1] / "configs",
)

# Names users reach for → the key that holds it.
ALIASES = {
    "learning_rate": "optimizer.lr",
    "lr": "optimizer.lr",
    "base_lr": "optimizer.lr",
    "wd": "optimizer.weight_decay",
    "weight_decay": "optimizer.weight_decay",
    "momentum": "optimizer.momentum",
    "batch": "train.batch_size",
    "batch_size": "train.batch_size",
    "samples_per_gpu": "train.per_gpu_batch",
    "epochs": "schedule.epochs",
    "max_epochs": "schedule.epochs",
    "steps": "train.num_steps",
    "num_steps": "train.num_steps",
    "iters": "train.num_steps",
    "img_size": "input_size",
    "image_size": "input_size",
    "size": "input_size",
    "dtype": "precision",
    "classes": "class_names",
    "score_threshold": "test.score_thr",
    "iou_thr": "test.nms_iou",
}


def config_names() -> list[str]:
    """Names of the bundled configs (``configs/*.py``)."""
    for directory in _CONFIG_DIRS:
        if directory.is_dir():
            return sorted(p.stem for p in directory.glob("*.py") if not p.stem.startswith("_"))
    return []


def resolve_config_path(path_or_name: str | os.PathLike) -> pathlib.Path:
    """A config file path, or a bundled config's name (``ssd300_coco``) → the file."""
    path = pathlib.Path(os.fspath(path_or_name))
    if path.is_file():
        return path.resolve()
    if path.suffix != ".py" and path.parent == pathlib.Path("."):
        for directory in _CONFIG_DIRS:
            candidate = directory / f"{path.name}.py"
            if candidate.is_file():
                return candidate
    names = ", ".join(config_names())
    raise InputFileError(f"config file not found: {path_or_name} (bundled configs: {names})")


def load_config(
    path_or_name: str | os.PathLike, overrides: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of a config file (or bundled config name); apply ``key=value``
    overrides (a leading ``--`` and ``config.`` are accepted)."""
    config = _run_get_config(resolve_config_path(path_or_name))
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("-").removeprefix("config.")
        if not sep:
            raise ConfigError(f"config override {item!r} is not of the form key=value")
        set_by_path(config, key, _parse(value))
    return config


def base_config(config_file: str | os.PathLike, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config ``name`` next to ``config_file`` (for config variants)."""
    return _run_get_config(pathlib.Path(config_file).resolve().with_name(f"{name}.py"))


def _run_get_config(path: pathlib.Path) -> ml_collections.ConfigDict:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_ssd_jax_config_{path.stem}_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config()


def _parse(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def iter_keys(config: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a (nested) ConfigDict, leaves and inner nodes."""
    for key in config.keys():
        full = f"{prefix}{key}"
        yield full
        value = config[key]
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            yield from iter_keys(value, f"{full}.")


def nearest_keys(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
    """The valid dotted keys closest to ``key``: by whole key, by leaf name, by alias."""
    keys = list(iter_keys(config))
    leaf = key.rsplit(".", 1)[-1].lower()
    scored: dict[str, float] = {}

    def offer(candidate: str, score: float) -> None:
        if candidate in keys:
            scored[candidate] = max(scored.get(candidate, 0.0), score)

    for alias, target in ALIASES.items():
        offer(target, difflib.SequenceMatcher(None, leaf, alias).ratio())
    for candidate in keys:
        offer(candidate, difflib.SequenceMatcher(None, key.lower(), candidate.lower()).ratio())
        offer(
            candidate,
            difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1].lower()).ratio(),
        )
    ranked = sorted((s, k) for k, s in scored.items() if s >= 0.6)
    return [k for _, k in sorted(ranked, key=lambda t: (-t[0], t[1]))[:n]]


def set_by_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set ``config.a.b = value``; an unknown key raises UnknownConfigKeyError naming the
    nearest valid keys."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            close = nearest_keys(config, key)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            name = config.get("name", "the config")
            raise UnknownConfigKeyError(f"unknown config key {key!r} in {name}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    try:
        node[parts[-1]] = value
    except (TypeError, ValueError) as e:  # ConfigDict refuses a value of another type
        raise ConfigError(f"config key {key}: {e}") from None


def get_by_path(config: ml_collections.ConfigDict, key: str) -> Any:
    """``config.a.b`` for ``key='a.b'`` (KeyError if absent)."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


# (key, test, requirement) for validate_config; a test is False for NaN and for non-numbers.
_RANGES = (
    ("input_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("optimizer.lr", lambda v: _is_real(v) and 0 < v < float("inf"), "> 0 and finite"),
    ("optimizer.weight_decay", lambda v: _is_real(v) and 0 <= v < float("inf"), ">= 0 and finite"),
    ("optimizer.momentum", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
    ("train.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("train.per_gpu_batch", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: whole batch)"),
    ("train.max_boxes", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("test.score_thr", lambda v: _is_real(v) and 0 <= v <= 1, "in [0, 1]"),
    ("test.nms_iou", lambda v: _is_real(v) and 0 < v <= 1, "in (0, 1]"),
    ("test.max_per_img", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("precision", lambda v: v in ("fp32", "bf16", "fp64"), "one of 'fp32', 'bf16', 'fp64'"),
)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN != NaN


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Refuse values out of range before anything is built (ConfigError listing each one).

    Checked where present: input_size > 0; optimizer.lr > 0; optimizer.weight_decay >= 0;
    optimizer.momentum in [0, 1); train.batch_size > 0; train.per_gpu_batch >= 0 and dividing
    train.batch_size; train.max_boxes >= 1; test.score_thr in [0, 1]; test.nms_iou in (0, 1];
    test.max_per_img >= 1; precision fp32/bf16/fp64. NaN, infinities, booleans, strings and
    floats where an integer is needed are refused too.
    """
    problems = []
    for key, ok, requirement in _RANGES:
        try:
            value = get_by_path(config, key)
        except (KeyError, AttributeError, TypeError):
            continue
        if not ok(value):
            problems.append(f"{key}={value!r} must be {requirement}")
    t = config.get("train", {})
    per_gpu, batch = t.get("per_gpu_batch", 0), t.get("batch_size", 0)
    if _is_int(per_gpu) and per_gpu > 0 and _is_int(batch) and batch > 0 and batch % per_gpu:
        problems.append(
            f"train.batch_size={batch} is not a multiple of train.per_gpu_batch={per_gpu}"
        )
    if problems:
        raise ConfigError(
            f"invalid {config.get('name', 'config')} settings: " + "; ".join(problems)
        )


def check_batch_divisible(batch_size: int, num_devices: int) -> None:
    """Refuse a global batch that does not split evenly over ``num_devices`` (all processes').

    Raises ConfigError naming both numbers and the nearest valid batch sizes.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if batch_size < 1 or batch_size % num_devices:
        below = batch_size // num_devices * num_devices
        above = below + num_devices
        options = " or ".join(str(b) for b in (below, above) if b > 0)
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {num_devices} "
            f"devices: use a multiple of {num_devices}, e.g. {options}"
        )
