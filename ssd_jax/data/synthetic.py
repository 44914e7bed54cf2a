"""A small deterministic COCO-format detection data set of coloured shapes, for a data-less start.

    python -m ssd_jax.data.synthetic data/shapes          # 1000 train + 200 val, 128 px

writes ``annotations/instances_{train,val}.json`` and ``{train,val}/*.jpg``. Each image has 1–6
filled shapes (classes: ellipse, rectangle, triangle, star; the class is the shape, colours are
random) of √(w·h) 16–64 px at 128 px (12.5–50 % of the image side), aspect ratios 1:2–2:1,
rotated up to ±30°, on a gradient, stripe or blotch background, with pixel noise. Shapes may
overlap (each keeps ≥ 50 % of its pixels visible) or leave the image by up to a quarter of their
size. Boxes are the tight boxes of each whole shape's pixels (occluded parts included) clipped to
the image. The same seed gives the same bytes; images are seeded one by one, so the train set
does not depend on ``num_val``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from collections.abc import Sequence

import cv2
import numpy as np

SHAPE_CLASSES = ("ellipse", "rectangle", "triangle", "star")
MIN_SIZE, MAX_SIZE = 0.125, 0.5  # sqrt(w·h) of a shape before rotation, fraction of the image
MAX_ASPECT = 2.0  # w / h in [1/MAX_ASPECT, MAX_ASPECT]
MAX_ROTATION = np.deg2rad(30.0)
MAX_OBJECTS = 6
MIN_VISIBLE = 0.5  # fraction of a shape's pixels left uncovered by later shapes
MIN_BOX_SIDE = 4  # px, after clipping to the image
MIN_CONTRAST = 90.0  # mean |shape colour − pixels beneath| summed over RGB
BLOTCH_AMPLITUDE = 70.0  # ± per channel around the background colour
JPEG_QUALITY = 92
_SHIFT = 4  # cv2.fillPoly sub-pixel bits


def write_shapes_dataset(
    root: str | os.PathLike,
    num_train: int = 3000,
    num_val: int = 200,
    image_size: int = 128,
    seed: int = 0,
) -> dict[str, str]:
    """Write the data set under ``root``; returns the paths of its annotation files and folders.

    Keys: ``'root'``, ``'train_images'``, ``'val_images'``, ``'train_annotations'``,
    ``'val_annotations'``. Category ids are 1..4 in :data:`SHAPE_CLASSES` order.
    """
    root = pathlib.Path(root)
    paths = {"root": str(root)}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        image_dir = root / split
        ann_file = root / "annotations" / f"instances_{split}.json"
        coco = write_split(image_dir, count, image_size, (seed, split_index))
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps(coco))
        paths[f"{split}_images"], paths[f"{split}_annotations"] = str(image_dir), str(ann_file)
    return paths


def write_split(image_dir: pathlib.Path, count: int, image_size: int, seed: Sequence[int]) -> dict:
    """Write ``count`` JPEGs to ``image_dir``; returns their COCO ``instances`` dict."""
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([*seed, i])
        image, objects = render_image(rng, image_size)
        file_name = f"{i:06d}.jpg"
        ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding of {file_name} failed")
        (image_dir / file_name).write_bytes(data.tobytes())
        images.append(
            {"id": i + 1, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for label, box, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"}
        for k, name in enumerate(SHAPE_CLASSES)
    ]
    return {
        "info": {"description": "ssd_jax synthetic shapes", "seed": list(seed)},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def render_image(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[int, list[float], float]]]:
    """One uint8 RGB (size, size, 3) image and its objects ``(label, [x, y, w, h] px, area px²)``.

    ``area`` is the shape's pixel count inside the image (COCO's small/medium/large ranges).
    """
    image = background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # index of the object drawn on top of each pixel
    objects, areas = [], []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        placed = place_shape(rng, size, owner, areas)
        if placed is None:
            continue
        label, mask = placed
        image[mask] = pick_colour(rng, image[mask])
        owner[mask] = len(objects)
        areas.append(int(mask.sum()))
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        objects.append((label, [float(x), float(y), float(w), float(h)], float(areas[-1])))
    image += rng.standard_normal(image.shape, np.float32) * np.float32(rng.uniform(2.0, 12.0))
    return np.clip(image, 0, 255, out=image).astype(np.uint8), objects


def place_shape(
    rng: np.random.Generator, size: int, owner: np.ndarray, areas: list[int], tries: int = 20
) -> tuple[int, np.ndarray] | None:
    """A random shape's label and (size, size) bool mask that leaves earlier shapes visible."""
    for _ in range(tries):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        mask = shape_mask(shape_polygon(rng, label, size), size)
        _, _, w, h = cv2.boundingRect(mask.view(np.uint8))
        if min(w, h) < MIN_BOX_SIDE:
            continue
        covered = np.bincount(owner[mask & (owner >= 0)], minlength=len(areas))
        visible = np.bincount(owner[owner >= 0], minlength=len(areas)) - covered
        if np.all(visible >= MIN_VISIBLE * np.asarray(areas)):
            return label, mask
    return None


def shape_polygon(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """(P, 2) float xy vertices of a random shape of class ``label`` placed in the image."""
    scale = size * np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE)))
    aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
    half = 0.5 * scale * np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)])
    theta = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (unit_shape(rng, label) * half) @ rotation.T
    lo, hi = points.min(0), points.max(0)
    slack = 0.25 * (hi - lo)  # let up to a quarter of the shape leave the image
    centre = rng.uniform(-lo - slack, size - hi + slack)
    return points + centre


def unit_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """(P, 2) vertices of a class's outline in [-1, 1]²."""
    name = SHAPE_CLASSES[label]
    if name == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if name == "triangle":
        return np.array([[rng.uniform(-1, 1), -1], [1, 1], [-1, 1]], float)
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2  # five-pointed star
    radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def shape_mask(polygon: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool pixels of a filled polygon (pixel centres at integer coordinates)."""
    mask = np.zeros((size, size), np.uint8)
    points = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def pick_colour(rng: np.random.Generator, beneath: np.ndarray, tries: int = 10) -> np.ndarray:
    """A random RGB colour (3,) contrasting with the (N, 3) pixels it will cover."""
    best, best_contrast = None, -1.0
    for _ in range(tries):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        contrast = float(np.abs(beneath - colour).sum(1).mean())
        if contrast >= MIN_CONTRAST:
            return colour
        if contrast > best_contrast:
            best, best_contrast = colour, contrast
    return best


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float32 RGB texture: a gradient, stripes or smooth blotches."""
    kind = rng.integers(3)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    if kind == 2:
        cells = int(rng.integers(3, 7))
        blotches = rng.uniform(-BLOTCH_AMPLITUDE, BLOTCH_AMPLITUDE, (cells, cells, 3))
        blotches = cv2.resize(
            blotches.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
        )
        return (c0 + blotches).clip(0, 255)
    angle = rng.uniform(0, np.pi)
    coords = np.arange(size, dtype=np.float32)
    along = coords[None, :] * np.cos(angle, dtype=np.float32) + coords[:, None] * np.sin(
        angle, dtype=np.float32
    )
    if kind == 0:
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    else:
        period = rng.uniform(6.0, 32.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * along / period)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"writing {args.num_train} train + {args.num_val} val images of {args.image_size} px "
        f"to {args.out_dir} ...",
        flush=True,
    )
    start = time.time()
    paths = write_shapes_dataset(
        args.out_dir, args.num_train, args.num_val, args.image_size, args.seed
    )
    print(f"done in {time.time() - start:.1f} s")
    for key, path in paths.items():
        print(f"  {key}: {path}")


if __name__ == "__main__":
    main()
