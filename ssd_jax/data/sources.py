"""``build_source``: the data source of a config's split (COCO-format files, TFDS or VOC).

train = build_source(config, "train")
val = build_source(config, "val")                     # None when no val split is configured
other = build_source(config, "val", ann_file="x.json", img_dir="images/")
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from ssd_jax.errors import ConfigError, InputFileError

SOURCES = ("coco", "tfds", "voc")


def build_source(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    data: str = "",
    ann_file: str = "",
    img_dir: str = "",
    tfds_name: str = "",
    tfds_split: str = "",
    voc_root: str = "",
    voc_split: str = "",
    voc_year: str = "",
    required: bool = False,
) -> Any | None:
    """The ``split`` ('train' or 'val') source of ``data`` (default ``config.data.source``, or
    'coco' when ``ann_file`` is given); empty arguments fall back to the config.

    Train: ``data.ann_file`` / ``img_dir`` (COCO-format; images are left out as mmdetection's
    ``filter_cfg=dict(filter_empty_gt=True, min_size=...)`` leaves them out: those without any
    annotation of a listed category, and those whose shorter side is below ``data.min_size``
    pixels; no box is filtered by size), ``data.tfds_name`` split 'train', or VOC
    ``data.voc_split``. Val: ``data.val_ann_file`` / ``val_img_dir``, TFDS
    split 'validation', VOC ``data.val_voc_split``. A COCO val split that is not configured gives
    None, unless ``required``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected 'train' or 'val'")
    d = config.data
    data = data or ("coco" if ann_file else d.get("source", "coco"))
    train = split == "train"
    if data == "coco":
        from ssd_jax.data.coco import CocoSource

        ann_file = ann_file or d.get("ann_file" if train else "val_ann_file", "")
        img_dir = img_dir or d.get("img_dir" if train else "val_img_dir", "")
        if not ann_file or not img_dir:
            if not train and not required:
                return None
            prefix = "" if train else "val_"
            raise ConfigError(
                f"COCO {split} data needs an annotation file and an image folder "
                f"(config.data.{prefix}ann_file / {prefix}img_dir)"
            )
        for path in (ann_file, img_dir):
            if not os.path.exists(path):
                raise InputFileError(f"{split} data not found: {path}")
        if not os.path.isdir(img_dir):
            raise InputFileError(f"{split} image folder {img_dir} is not a folder")
        if not os.listdir(img_dir):
            raise InputFileError(f"{split} image folder {img_dir} is empty")
        if train:
            return CocoSource(ann_file, img_dir, filter_train=True, min_size=d.get("min_size", 0))
        return CocoSource(ann_file, img_dir)
    if data == "tfds":
        from ssd_jax.data.tfds_source import TfdsSource

        return TfdsSource(
            tfds_name or d.get("tfds_name", "coco/2017"),
            tfds_split or ("train" if train else "validation"),
        )
    if data == "voc":
        from ssd_jax.data.voc import VocSource

        root = voc_root or d.get("voc_root", "")
        if not root:
            raise ConfigError("VOC data needs config.data.voc_root (the folder holding VOCdevkit)")
        default_split = d.get("voc_split", "trainval") if train else d.get("val_voc_split", "test")
        return VocSource(
            root, split=voc_split or default_split, year=voc_year or d.get("voc_year", "2007")
        )
    raise ConfigError(f"unknown data source {data!r} (one of {', '.join(SOURCES)})")
