"""JSON files of runs: strict JSON writing (NaN and infinities as null) and ``metrics.jsonl``.

write_json("runs/x/final_metrics.json", summary)
last_validation("runs/x/metrics.jsonl")      # {'step': 3000, 'bbox_mAP': ...}
history_from_metrics("runs/x/metrics.jsonl")  # the curves' series
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """NaN/inf floats → None, NumPy scalars → Python, recursively through dicts and lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON (NaN and infinities as null)."""
    with open(path, "w") as f:
        json.dump(json_safe(data), f, indent=2, sort_keys=True)
        f.write("\n")


def metrics_rows(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The JSON rows of a ``metrics.jsonl``, skipping blank lines."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def history_from_metrics(path: str | os.PathLike) -> dict[str, list]:
    """The curves' history from a run's ``metrics.jsonl``.

    Rows with "loss" give (step, loss); rows with "val/bbox_mAP_50" give (eval_step, mAP). A
    step logged twice (a resumed run) keeps its last value.
    """
    loss: dict[int, float] = {}
    mean_ap: dict[int, float] = {}
    for row in metrics_rows(path):
        if "loss" in row:
            loss[int(row["step"])] = float(row["loss"])
        if "val/bbox_mAP_50" in row:
            mean_ap[int(row["step"])] = float(row["val/bbox_mAP_50"])
    return {
        "step": sorted(loss),
        "loss": [loss[s] for s in sorted(loss)],
        "eval_step": sorted(mean_ap),
        "mAP": [mean_ap[s] for s in sorted(mean_ap)],
    }


def last_validation(path: str | os.PathLike) -> dict[str, Any]:
    """The last validation row of a ``metrics.jsonl`` (keys without the "val/" prefix, plus
    "step"), or {} when the run never validated."""
    last: dict[str, Any] = {}
    for row in metrics_rows(path):
        if any(k.startswith("val/") for k in row):
            last = {"step": row["step"]} | {
                k[4:]: v for k, v in row.items() if k.startswith("val/")
            }
    return last
