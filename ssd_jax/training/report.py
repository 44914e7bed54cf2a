"""Pictures and summaries of a run: loss and mAP curves, validation images with detections.

    write_curves(history, "runs/shapes/curves.png")
    write_curves(history_from_metrics("runs/shapes/metrics.jsonl"), "curves.png")
    write_val_detections(Detector(config, variables), val_source, "runs/shapes/val_detections")
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_curves(history: dict, path: str) -> None:
    """PNG with the training loss (left) and validation mAP@0.5 (right) against the step.

    ``history``: {"step": [...], "loss": [...], "eval_step": [...], "mAP": [...]} as the training
    loop keeps it; empty lists give empty axes.
    """
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history.get("step", []), history.get("loss", []))
    ax_loss.set(xlabel="step", ylabel="loss (cls + bbox)", title="training loss")
    ax_map.plot(history.get("eval_step", []), history.get("mAP", []), marker="o")
    ax_map.set(xlabel="step", ylabel="mAP@0.5", title="validation", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def history_from_metrics(path: str | os.PathLike) -> dict[str, list]:
    """The curves' history from a run's ``metrics.jsonl``.

    Rows with "loss" give (step, loss); rows with "val/bbox_mAP_50" give (eval_step, mAP). A
    step logged twice (a resumed run) keeps its last value.
    """
    loss: dict[int, float] = {}
    mean_ap: dict[int, float] = {}
    for row in _metrics_rows(path):
        if "loss" in row:
            loss[int(row["step"])] = float(row["loss"])
        if "val/bbox_mAP_50" in row:
            mean_ap[int(row["step"])] = float(row["val/bbox_mAP_50"])
    return {"step": sorted(loss), "loss": [loss[s] for s in sorted(loss)],
            "eval_step": sorted(mean_ap), "mAP": [mean_ap[s] for s in sorted(mean_ap)]}


def last_validation(path: str | os.PathLike) -> dict[str, Any]:
    """The last validation row of a ``metrics.jsonl`` (keys without the "val/" prefix, plus
    "step"), or {} when the run never validated."""
    last: dict[str, Any] = {}
    for row in _metrics_rows(path):
        if any(k.startswith("val/") for k in row):
            last = {"step": row["step"]} | {k[4:]: v for k, v in row.items()
                                             if k.startswith("val/")}
    return last


def _metrics_rows(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The JSON rows of a ``metrics.jsonl``, skipping blank lines."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_val_detections(detector: Any, source: Any, out_dir: str | os.PathLike, n: int = 8, *,
                         score_thr: float = 0.3, min_side: int = 384) -> list[str]:
    """PNGs of the first ``n`` images of ``source`` with ``detector``'s detections drawn.

    detector: an ``ssd_jax.Detector`` (e.g. ``Detector(config, variables)`` or
    ``Detector.from_checkpoint(config, "runs/shapes/checkpoints")``). source: records with
    "file_name" (or "image") and "image_id", e.g. a ``CocoSource`` of the val split. Images
    smaller than ``min_side`` are enlarged by an integer factor first, so that the captions stay
    readable; detections scoring at most ``score_thr`` are left out. Files are
    ``out_dir/<image_id>.png``; returns their paths.
    """
    from PIL import Image

    from ssd_jax.image_io import read_image_rgb
    from ssd_jax.visualize import draw_detections

    os.makedirs(out_dir, exist_ok=True)
    records = [source[i] for i in range(min(n, len(source)))]
    images = [r["image"] if "image" in r else read_image_rgb(r["file_name"]) for r in records]
    if not images:
        return []
    results = detector.predict(images, batch_size=len(images))
    paths = []
    for record, image, result in zip(records, images, results):
        factor = max(1, math.ceil(min_side / min(image.shape[:2])))
        big = _enlarge(image, factor)
        drawn = draw_detections(big, np.asarray(result["boxes"]) * factor, result["scores"],
                                result["labels"], detector.class_names, score_thr=score_thr)
        path = os.path.join(out_dir, f"{int(record['image_id']):06d}.png")
        Image.fromarray(drawn).save(path)
        paths.append(path)
    return paths


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour ×``factor`` (pixels stay sharp; box coordinates scale by ``factor``)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


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


def format_seconds(seconds: float) -> str:
    """"12 min 5 s" / "48 s"."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"

