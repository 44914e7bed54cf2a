"""Small COCO-format files for tests: ``coco_json`` writes one, ``ann`` makes an annotation."""

from __future__ import annotations

import json
import pathlib


def coco_json(
    path: pathlib.Path, images, annotations, categories=({"id": 1, "name": "thing"},)
) -> pathlib.Path:
    """Write a COCO annotation file; ``images`` are (id, file_name, height, width)."""
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": n, "height": h, "width": w} for i, n, h, w in images
                ],
                "annotations": list(annotations),
                "categories": list(categories),
            }
        )
    )
    return path


def ann(ann_id: int, image_id: int, bbox, category_id: int = 1, area=None) -> dict:
    area = bbox[2] * bbox[3] if area is None else area
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "area": area,
        "iscrowd": 0,
    }
