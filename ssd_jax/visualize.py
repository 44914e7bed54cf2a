"""Drawing detections onto images (Pillow): a box, class name and score per detection."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One RGB colour per class, cycled by label index (matplotlib's tab20 order).
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def class_color(label: int) -> tuple[int, int, int]:
    """The fixed RGB colour of class index ``label``."""
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], score_thr: float = 0.3) -> np.ndarray:
    """A copy of ``image`` with the detections scoring above ``score_thr`` drawn on it.

    image: uint8 RGB (H, W, 3), not modified. boxes: (K, 4) xyxy in the image's pixels;
    scores: (K,); labels: (K,) indices into ``class_names`` (an unknown index is shown as a
    number). Each detection gets its class colour's outline and a "name score" caption on a
    filled background, above the box where it fits, otherwise just inside it. Higher scores
    are drawn last, i.e. on top. Returns a new uint8 RGB (H, W, 3) array.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB (H, W, 3) image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores and labels differ in length: "
                         f"{len(boxes)}, {len(scores)}, {len(labels)}")
    canvas = Image.fromarray(image.copy(), "RGB")
    draw = ImageDraw.Draw(canvas)
    height, width = image.shape[:2]
    line = max(1, round(max(height, width) / 200))
    font = ImageFont.load_default(size=int(np.clip(min(height, width) / 25, 10, 24)))
    keep = (scores > score_thr) & np.isfinite(boxes).all(axis=1)
    for i in np.flatnonzero(keep)[np.argsort(scores[keep], kind="stable")]:
        box = _clip_box(boxes[i], width, height)
        color = class_color(labels[i])
        draw.rectangle(box, outline=color, width=line)
        caption = f"{_class_name(class_names, labels[i])} {scores[i]:.2f}"
        _draw_caption(draw, font, caption, box, color, width)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _class_name(class_names: Sequence[str], label: int) -> str:
    label = int(label)
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """xyxy with x1 <= x2, y1 <= y2, inside the image's pixel grid."""
    x1, x2 = np.clip(sorted(box[0::2]), 0, width - 1)
    y1, y2 = np.clip(sorted(box[1::2]), 0, height - 1)
    return float(x1), float(y1), float(x2), float(y2)


def _draw_caption(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
                  text: str, box: tuple[float, float, float, float],
                  color: tuple[int, int, int], image_width: int) -> None:
    """``text`` on a ``color`` background at the box's top-left corner, kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left + 2, bottom - top + 2  # 1 px padding either side
    x = max(0, min(box[0], image_width - text_w))
    y = box[1] - text_h if box[1] >= text_h else box[1]
    draw.rectangle((x, y, x + text_w, y + text_h), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    draw.text((x + 1 - left, y + 1 - top), text, fill=ink, font=font)
