"""Pictures: detections drawn onto images (Pillow), validation images of a run, loss and mAP
curves (matplotlib, imported when used).

    drawn = draw_detections(image, boxes, scores, labels, class_names)
    write_val_detections(Detector(config, variables), val_source, "runs/shapes/val_detections")
    write_curves(history_from_metrics("runs/shapes/metrics.jsonl"), "runs/shapes/curves.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One RGB colour per class, cycled by label index (matplotlib's tab20 order).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


def class_color(label: int) -> tuple[int, int, int]:
    """The fixed RGB colour of class index ``label``."""
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    score_thr: float = 0.3,
) -> np.ndarray:
    """A copy of ``image`` with the detections scoring above ``score_thr`` drawn on it.

    image: uint8 RGB (H, W, 3), not modified. boxes: (K, 4) xyxy in the image's pixels;
    scores: (K,); labels: (K,) indices into ``class_names`` (an unknown index is shown as a
    number). Each detection gets its class colour's outline and a "name score" tag on a filled
    background. Tags never cover one another: see ``place_tags`` (higher scores choose first; a
    tag with no free place is left out). Boxes are drawn first, higher scores on top, then the
    tags. Returns a new uint8 RGB (H, W, 3) array.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB (H, W, 3) image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"boxes, scores and labels differ in length: {len(boxes)}, {len(scores)}, {len(labels)}"
        )
    canvas = Image.fromarray(image.copy(), "RGB")
    draw = ImageDraw.Draw(canvas)
    height, width = image.shape[:2]
    line = max(1, round(max(height, width) / 200))
    font = ImageFont.load_default(size=int(np.clip(min(height, width) / 25, 10, 24)))
    keep = (scores > score_thr) & np.isfinite(boxes).all(axis=1)
    order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]  # best first
    clipped = [_clip_box(boxes[i], width, height) for i in order]
    for i, box in reversed(list(zip(order, clipped))):  # the best box on top
        draw.rectangle(box, outline=class_color(labels[i]), width=line)
    captions = [f"{_class_name(class_names, labels[i])} {scores[i]:.2f}" for i in order]
    extents = [draw.textbbox((0, 0), c, font=font) for c in captions]
    sizes = [(r - l + 2, b - t + 2) for l, t, r, b in extents]  # 1 px padding either side
    for i, caption, (l, t, _, _), tag in zip(
        order, captions, extents, place_tags(clipped, sizes, width, height)
    ):
        if tag is None:
            continue
        color = class_color(labels[i])
        draw.rectangle(tag, fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text(
            (tag[0] + 1 - l, tag[1] + 1 - t),
            caption,
            fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
            font=font,
        )
    return np.asarray(canvas, dtype=np.uint8).copy()


Rect = tuple[float, float, float, float]


def place_tags(
    boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], width: int, height: int
) -> list[Rect | None]:
    """Where each box's tag goes (xyxy pixels), or None: tags never overlap one another.

    In order (the first boxes choose first), a tag of ``sizes[k]`` (w, h) takes the first free
    place of: above the box's top-left corner, inside it at the top-left, below its bottom-left
    corner, inside at the bottom-left, then further below the box in steps of the tag's height;
    x is kept inside the image. A place is free when it lies inside the image and overlaps no
    tag placed before it.
    """
    placed: list[Rect] = []
    out: list[Rect | None] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes):
        x = max(0.0, min(x1, width - w))
        candidates = [y1 - h, y1, y2, y2 - h] + [y2 + k * h for k in range(1, 8)]
        spot = None
        for y in candidates:
            rect = (x, y, x + w, y + h)
            if y >= 0 and y + h <= height and not any(_overlap(rect, r) for r in placed):
                spot = rect
                break
        out.append(spot)
        if spot is not None:
            placed.append(spot)
    return out


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _class_name(class_names: Sequence[str], label: int) -> str:
    label = int(label)
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """xyxy with x1 <= x2, y1 <= y2, inside the image's pixel grid."""
    x1, x2 = np.clip(sorted(box[0::2]), 0, width - 1)
    y1, y2 = np.clip(sorted(box[1::2]), 0, height - 1)
    return float(x1), float(y1), float(x2), float(y2)


def write_val_detections(
    detector: Any,
    source: Any,
    out_dir: str | os.PathLike,
    n: int = 8,
    *,
    score_thr: float = 0.3,
    min_side: int = 384,
) -> list[str]:
    """PNGs of the first ``n`` images of ``source`` with ``detector``'s detections drawn.

    detector: an ``ssd_jax.Detector`` (e.g. ``Detector(config, variables)`` or
    ``Detector.from_checkpoint(config, "runs/shapes/checkpoints")``). source: records with
    "file_name" (or "image") and "image_id", e.g. a ``CocoSource`` of the val split. Images
    smaller than ``min_side`` are enlarged by an integer factor first, so that the captions stay
    readable; detections scoring at most ``score_thr`` are left out. Files are
    ``out_dir/<image_id>.png``; returns their paths.
    """
    from ssd_jax.image_io import read_image_rgb

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
        drawn = draw_detections(
            big,
            np.asarray(result["boxes"]) * factor,
            result["scores"],
            result["labels"],
            detector.class_names,
            score_thr=score_thr,
        )
        path = os.path.join(out_dir, f"{int(record['image_id']):06d}.png")
        Image.fromarray(drawn).save(path)
        paths.append(path)
    return paths


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour ×``factor`` (pixels stay sharp; box coordinates scale by ``factor``)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def write_curves(history: dict, path: str) -> None:
    """PNG with the training loss (left) and validation mAP@0.5 (right) against the step.

    ``history``: {"step": [...], "loss": [...], "eval_step": [...], "mAP": [...]} as the training
    loop keeps it; empty lists give empty axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history.get("step", []), history.get("loss", []))
    ax_loss.set(xlabel="step", ylabel="loss (cls + bbox)", title="training loss")
    ax_map.plot(history.get("eval_step", []), history.get("mAP", []), marker="o")
    ax_map.set(xlabel="step", ylabel="mAP@0.5", title="validation", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
