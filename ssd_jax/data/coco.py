"""COCO-format detection annotations as a random-access source of per-image records.

    source = CocoSource("annotations/instances_train2017.json", "train2017", filter_train=True)
    record = source[0]   # {"image_id", "file_name", "height", "width", "boxes", "labels"}

Annotations are parsed as mmdetection's ``CocoDataset.parse_data_info`` (mmdet 3.x) does for SSD
training; see ``drop_reason``. Images are filtered as its ``filter_data`` with
``filter_cfg=dict(filter_empty_gt=True, min_size=32)``; see ``CocoSource``.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import math
import os
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from ssd_jax.errors import UserError

log = logging.getLogger(__name__)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CocoFormatError(UserError, ValueError):
    """The annotation file is unreadable or not COCO as ``CocoSource`` reads it; the message
    names the file, the entry (``images[3] (id 7)``) and the problem."""


def drop_reason(
    bbox: Any,
    area: float,
    category_known: bool,
    image_hw: tuple[float, float],
    *,
    ignore: bool = False,
    crowd: bool = False,
) -> str | None:
    """Why mmdetection leaves an annotation out of SSD's ground truth, or None to keep it.

    Checks in mmdet's order: "ignore" (``ann['ignore']``); "non_finite" (a corner x, y, x + w
    or y + h that is NaN or infinite as float32, the boxes' dtype; not a mmdet check);
    "empty_intersection" (the [x, y, w, h] box's intersection with the image has zero width or
    height: outside the image, or w or h <= 0); "degenerate" (area <= 0, w < 1 or h < 1);
    "unknown_category"; "crowd" (mmdet keeps crowd boxes as ignored instances, which SSD's loss
    never uses).
    """
    x, y, w, h = (float(v) for v in bbox)
    height, width = image_hw
    if ignore:
        return "ignore"
    if not all(abs(v) <= _FLOAT32_MAX for v in (x, y, x + w, y + h)):  # False for NaN too
        return "non_finite"
    inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
    inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
    if inter_w * inter_h == 0:
        return "empty_intersection"
    if area <= 0 or w < 1 or h < 1:
        return "degenerate"
    if not category_known:
        return "unknown_category"
    if crowd:
        return "crowd"
    return None


class CocoSource:
    """Per-image records of a COCO-format annotation file (grain ``RandomAccessDataSource``).

    Labels: category ids sorted ascending; label i ↔ ``cat_ids[i]`` ↔ ``class_names[i]``.
    Record ``i`` (images in the JSON's order)::

        {"image_id": int, "file_name": str (absolute path), "height": int, "width": int,
         "boxes": float32 (n, 4) xyxy pixels ([x, y, x + w, y + h], not clipped to the image, as
                  in mmdetection), "labels": int32 (n,),
         "crowd_boxes": float32 (m, 4) xyxy pixels of the crowd annotations}

    Crowd annotations that pass the other checks are mmdetection's ignored instances: they take
    part in the train augmentations (MinIoURandomCrop's IoU and centre tests) and never in the
    loss; counted in ``crowd``. Every other annotation left out is logged (``logging.warning``
    naming the file and the annotation id) and counted by reason in ``dropped``: the reasons of
    ``drop_reason`` and "unknown_image" (an annotation of an image id not in ``images``).

    ``filter_train=True`` also leaves out, as mmdetection's ``filter_data`` with
    ``filter_empty_gt=True``: images without any annotation of a listed category (counted as
    "no_annotations" in ``filtered``) and images with min(width, height) < ``min_size``
    ("too_small"). Like mmdetection, "any annotation" includes crowd, ignored and degenerate ones,
    so an image whose only annotation is a crowd box stays, with zero boxes.

    Raises CocoFormatError (a ValueError) naming the file (and the entry) for unreadable or
    truncated JSON, missing keys, values of the wrong type (see ``_validate``), and duplicate
    image, annotation or category ids.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        *,
        filter_train: bool = False,
        min_size: int = 32,
    ) -> None:
        self.ann_file = os.path.abspath(os.fspath(ann_file))
        self.img_dir = os.path.abspath(os.fspath(img_dir))
        self.filter_train = filter_train
        self.dropped: collections.Counter[str] = collections.Counter()
        self.crowd = 0
        self.filtered: collections.Counter[str] = collections.Counter()
        coco = _build_coco(self.ann_file, _load_json(self.ann_file))
        self.cat_ids: list[int] = sorted(coco.cats)
        self.class_names: list[str] = [coco.cats[c]["name"] for c in self.cat_ids]
        self._parse(coco, min_size if filter_train else None)

    def _parse(self, coco: COCO, min_size: int | None) -> None:
        cat2label = {c: i for i, c in enumerate(self.cat_ids)}
        self._count_unknown_images(coco)
        ids_with_known_cat = set().union(*(coco.catToImgs[c] for c in self.cat_ids))
        image_ids, file_names, sizes, boxes, labels, counts = [], [], [], [], [], []
        crowds, crowd_counts = [], []
        for img_id, info in coco.imgs.items():
            img_boxes, img_labels, img_crowd = self._parse_image(
                coco.imgToAnns[img_id], info, cat2label
            )
            if min_size is not None:
                reason = _filter_reason(img_id, info, ids_with_known_cat, min_size)
                if reason:
                    self.filtered[reason] += 1
                    continue
            image_ids.append(img_id)
            file_names.append(os.path.join(self.img_dir, info["file_name"]))
            sizes.append((info["height"], info["width"]))
            boxes.extend(img_boxes)
            labels.extend(img_labels)
            counts.append(len(img_labels))
            crowds.extend(img_crowd)
            crowd_counts.append(len(img_crowd))
        if self.filtered:
            log.info(
                "%s: left out %d images (%s)",
                self.ann_file,
                sum(self.filtered.values()),
                dict(self.filtered),
            )
        self._image_ids = np.asarray(image_ids, np.int64)
        self._file_names = file_names
        self._sizes = np.asarray(sizes, np.int64).reshape(-1, 2)  # (N, 2) height, width
        self._boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._labels = np.asarray(labels, np.int32)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._crowd = np.asarray(crowds, np.float32).reshape(-1, 4)
        self._crowd_offsets = np.concatenate([[0], np.cumsum(crowd_counts, dtype=np.int64)])

    def _parse_image(
        self, anns: list[dict], info: Mapping[str, Any], cat2label: Mapping[int, int]
    ) -> tuple[list[list[float]], list[int], list[list[float]]]:
        """mmdet ``parse_data_info`` for one image → kept xyxy boxes, labels, crowd boxes."""
        boxes, labels, crowd = [], [], []
        for ann in anns:
            reason = drop_reason(
                ann["bbox"],
                ann["area"],
                ann["category_id"] in cat2label,
                (info["height"], info["width"]),
                ignore=bool(ann.get("ignore")),
                crowd=bool(ann.get("iscrowd")),
            )
            if reason == "crowd":
                x, y, w, h = (float(v) for v in ann["bbox"])
                crowd.append([x, y, x + w, y + h])
                self.crowd += 1
                continue
            if reason:
                self._drop(ann, reason)
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(cat2label[ann["category_id"]])
        return boxes, labels, crowd

    def _count_unknown_images(self, coco: COCO) -> None:
        for img_id, anns in coco.imgToAnns.items():
            if img_id not in coco.imgs:
                for ann in anns:
                    self._drop(ann, "unknown_image")

    def _drop(self, ann: Mapping[str, Any], reason: str) -> None:
        self.dropped[reason] += 1
        log.warning(
            "%s: annotation id %s (image %s, bbox %s): dropped, %s",
            self.ann_file,
            ann["id"],
            ann["image_id"],
            ann["bbox"],
            reason,
        )

    def __len__(self) -> int:
        return len(self._image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        lo, hi = self._offsets[index], self._offsets[index + 1]
        c_lo, c_hi = self._crowd_offsets[index], self._crowd_offsets[index + 1]
        height, width = self._sizes[index]
        return {
            "image_id": int(self._image_ids[index]),
            "file_name": self._file_names[index],
            "height": int(height),
            "width": int(width),
            "boxes": self._boxes[lo:hi].copy(),
            "labels": self._labels[lo:hi].copy(),
            "crowd_boxes": self._crowd[c_lo:c_hi].copy(),
        }

    def __repr__(self) -> str:
        return (
            f"CocoSource(ann_file={self.ann_file!r}, img_dir={self.img_dir!r}, "
            f"filter_train={self.filter_train}, images={len(self)})"
        )


def _filter_reason(
    img_id: int, info: Mapping[str, Any], ids_with_known_cat: set[int], min_size: int
) -> str | None:
    if img_id not in ids_with_known_cat:
        return "no_annotations"
    if min(info["width"], info["height"]) < min_size:
        return "too_small"
    return None


def _load_json(path: str) -> dict[str, Any]:
    data = read_json_object(path)
    _validate(path, data)
    return data


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``CocoFormatError`` naming the file and the place when it
    is not JSON or not an object (its fields are not checked)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(
            f"{path}: unreadable or truncated JSON at line {e.lineno} column "
            f"{e.colno} (char {e.pos}): {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path}: not UTF-8 JSON: {e}") from e
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; deep nesting
        raise CocoFormatError(f"{path}: unreadable JSON: {e}") from e
    if not isinstance(data, dict):
        raise CocoFormatError(
            f"{path}: expected a JSON object at the top, got {type(data).__name__}"
        )
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_number(v: Any) -> bool:
    """A float, or an int (not bool) within int64: a 400-digit JSON integer is no coordinate."""
    return isinstance(v, float) or _is_int(v)


def _is_size(v: Any) -> bool:
    """An image height or width in pixels: a positive integer (``480`` or ``480.0``)."""
    return _is_number(v) and math.isfinite(v) and 0 < v < 2**31 and v == int(v)


def _is_xywh(bbox: Any) -> bool:
    return isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


#: What each entry must hold: key -> (check, what the value must be). NaN, infinite or negative
#: box numbers pass here; ``drop_reason`` drops and counts those boxes.
_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "images": {
        "id": (_is_int, "an integer"),
        "file_name": (_is_text, "a non-empty string"),
        "height": (_is_size, "a positive integer"),
        "width": (_is_size, "a positive integer"),
    },
    "annotations": {
        "id": (_is_int, "an integer"),
        "image_id": (_is_int, "an integer"),
        "category_id": (_is_int, "an integer"),
        "bbox": (_is_xywh, "[x, y, w, h] numbers"),
        "area": (_is_number, "a number"),
    },
    "categories": {"id": (_is_int, "an integer"), "name": (_is_text, "a non-empty string")},
}
#: Optional annotation flags, read as true/false (as mmdetection does): numbers or booleans.
_FLAGS = ("iscrowd", "ignore")


def _validate(path: str, data: Mapping[str, Any]) -> None:
    """Every entry a JSON object holding ``_FIELDS`` of the right types; ids unique per section.

    Raises CocoFormatError naming the file, the entry and the problem.
    """
    for section, fields in _FIELDS.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise CocoFormatError(f"{path}: missing or non-list '{section}'")
        first_index: dict[int, int] = {}
        for i, entry in enumerate(entries):
            missing = [k for k in fields if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise CocoFormatError(
                    f"{path}: {section}[{i}] lacks {missing}: {reprlib.repr(entry)}"
                )
            where = f"{path}: {section}[{i}] (id {reprlib.repr(entry['id'])})"
            for key, (check, what) in fields.items():
                if not check(entry[key]):
                    raise CocoFormatError(
                        f"{where} {key} is not {what}: {reprlib.repr(entry[key])}"
                    )
            for key in _FLAGS if section == "annotations" else ():
                if key in entry and not (_is_number(entry[key]) or isinstance(entry[key], bool)):
                    raise CocoFormatError(
                        f"{where} {key} is not a number or true/false: {reprlib.repr(entry[key])}"
                    )
            j = first_index.setdefault(entry["id"], i)
            if j != i:
                raise CocoFormatError(
                    f"{path}: {section}[{i}] repeats id {entry['id']} of {section}[{j}]"
                )


def _build_coco(path: str, data: dict[str, Any]) -> COCO:
    """A pycocotools index over already-validated data (its progress prints silenced)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    log.debug(
        "%s: %d images, %d annotations, %d categories",
        path,
        len(coco.imgs),
        len(coco.anns),
        len(coco.cats),
    )
    return coco
