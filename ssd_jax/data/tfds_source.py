"""A TFDS detection dataset with COCO's features as a random-access source of records.

    source = TfdsSource("coco/2017:1.1.0", split="train", data_dir="~/tensorflow_datasets")

Reads the prepared ArrayRecord files through ``tfds.data_source`` (random access, no
``tf.data``). Without TensorFlow installed, TFDS can still read them when the dataset is named with
its version ("coco/2017:1.1.0"): it then builds the dataset from the files' metadata. A name
without a version makes TFDS construct the dataset's builder class, and COCO's builder needs
TensorFlow (its ``_info`` uses ``tf.int64``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ssd_jax.data.coco import drop_reason

_NEEDS_TF = (
    "TFDS needs TensorFlow to construct the builder of {name!r}: pip install "
    "tensorflow-cpu to use TFDS sources, or name a prepared dataset with its version "
    "(e.g. 'coco/2017:1.1.0'), which TFDS reads from data_dir without TensorFlow."
)


class TfdsSource:
    """Records of a TFDS detection split with COCO's features (grain ``RandomAccessDataSource``).

    Features used: "image" uint8 (H, W, 3), "image/id", "objects/bbox" normalised
    [ymin, xmin, ymax, xmax], "objects/label" (a ClassLabel, already contiguous 0..K-1) and
    "objects/is_crowd". Record ``i``::

        {"image_id": int, "image": uint8 (H, W, 3), "height": int, "width": int,
         "boxes": float32 (n, 4) xyxy pixels, "labels": int32 (n,),
         "crowd_boxes": float32 (m, 4) xyxy pixels (ignored instances, as CocoSource's)}

    Objects are dropped by ``coco.drop_reason`` as ``CocoSource`` drops annotations (outside the
    image, w or h < 1 px; "area" is w·h of the box), silently: records are decoded
    lazily in loader workers, so there is no dataset-wide count. Unlike ``CocoSource`` there is no
    ``filter_train``: finding empty images would mean decoding the whole split first.
    """

    def __init__(
        self,
        name: str = "coco/2017",
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir)
        except ModuleNotFoundError as e:
            if "tensorflow" in str(e) and "tensorflow_datasets" not in str(e):
                raise ModuleNotFoundError(_NEEDS_TF.format(name=name)) from e
            raise
        self.class_names: list[str] = list(self._ds.dataset_info.features["objects"]["label"].names)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return example_to_record(self._ds[index])

    def __repr__(self) -> str:
        return f"TfdsSource(name={self.name!r}, split={self.split!r}, images={len(self)})"


def example_to_record(example: dict[str, Any]) -> dict[str, Any]:
    """A decoded TFDS example (NumPy) → record; see ``TfdsSource``."""
    image = np.asarray(example["image"], np.uint8)
    height, width = image.shape[:2]
    objects = example["objects"]
    yxyx = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
    xyxy = yxyx[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float64)
    labels = np.asarray(objects["label"], np.int64).reshape(-1)
    crowd = np.asarray(objects["is_crowd"], bool).reshape(-1)
    if not len(xyxy) == len(labels) == len(crowd):
        raise ValueError(
            f"image {example['image/id']}: objects have {len(xyxy)} bboxes, "
            f"{len(labels)} labels and {len(crowd)} is_crowd flags"
        )
    reasons = [_reason(box, bool(c), (height, width)) for box, c in zip(xyxy, crowd)]
    keep = np.array([r is None for r in reasons], bool)
    is_crowd = np.array([r == "crowd" for r in reasons], bool)
    return {
        "image_id": int(example["image/id"]),
        "image": image,
        "height": int(height),
        "width": int(width),
        "boxes": xyxy[keep].astype(np.float32).reshape(-1, 4),
        "labels": labels[keep].astype(np.int32),
        "crowd_boxes": xyxy[is_crowd].astype(np.float32).reshape(-1, 4),
    }


def _reason(xyxy: np.ndarray, crowd: bool, image_hw: tuple[int, int]) -> str | None:
    x1, y1, x2, y2 = xyxy
    w, h = x2 - x1, y2 - y1
    return drop_reason((x1, y1, w, h), w * h, True, image_hw, crowd=crowd)
