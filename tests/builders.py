"""Small COCO-format files for tests: ``coco_json`` writes one, ``ann`` makes an annotation;
``SMALL_SSDLITE``, the overrides of a 32 px SSDLite."""

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


#: The 32 px SSDLite of tests/per_gpu_check.py (configs/ssdlite_shapes.py overrides): a shorter
#: MobileNetV2 (stride-4 and stride-8 layers feed the neck), narrow extra levels, anchors for
#: 32 px. BatchNorm in backbone, neck and head as in the real one; for tests of plumbing
#: (training processes, resuming, checkpoints), where a 96 px model only adds compile time.
SMALL_SSDLITE = (
    "input_size=32",
    "model.backbone.out_indices=(1, 2)",
    "model.neck.in_channels=(24, 32)",
    "model.neck.out_channels=(24, 32, 32, 16, 16, 16)",
    "model.anchors.strides=(4, 8, 16, 32, 32, 32)",
    "model.anchors.min_sizes=(6, 9, 12, 16, 20, 24)",
    "model.anchors.max_sizes=(9, 12, 16, 20, 24, 32)",
)
