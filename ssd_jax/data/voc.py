"""Pascal VOC detection records, parsed as mmdetection's ``XMLDataset`` / ``VOCDataset``.

    source = VocSource("data", split="test", year="2007")   # data/VOCdevkit/VOC2007/...
    record = source[0]      # {'image_id', 'file_name', 'height', 'width', 'boxes', ...}
    image = source.load_image(0)                            # uint8 RGB (H, W, 3)

Box rule (mmdetection ``XMLDataset.parse_data_info``): each of xmin, ymin, xmax, ymax is read as
``int(float(text)) - 1``, i.e. VOC's 1-based inclusive pixel indices become 0-based inclusive
indices (all four coordinates shift; widths are ``x2 - x1 + 1`` in the legacy convention that
mmdetection's VOC metric uses). Objects of unknown class names are skipped, a missing
``<difficult>`` means 0, and a missing ``<size>`` is read from the image.
"""

from __future__ import annotations

import os
import pathlib
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
from PIL import Image

from ssd_jax.errors import InputFileError, UserError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class VocFormatError(UserError, ValueError):
    """An annotation XML that does not parse or lacks a field; the message names the file."""


class VocSource:
    """The images of ``ImageSets/Main/{split}.txt`` of one VOC year, with their annotations.

    Args:
        root: the folder holding ``VOCdevkit`` (or the ``VOCdevkit`` folder itself).
        split: image set name, e.g. ``'train'``, ``'val'``, ``'trainval'``, ``'test'``.
        year: ``'2007'`` or ``'2012'``.

    Every annotation is parsed on construction; a malformed XML raises ``VocFormatError`` (a
    ``ValueError``) naming it, a missing image set ``InputFileError``.
    """

    class_names = VOC_CLASSES

    def __init__(self, root: str | os.PathLike, split: str = "test", year: str = "2007"):
        devkit = pathlib.Path(root)
        if not (devkit / f"VOC{year}").is_dir():
            devkit = devkit / "VOCdevkit"
        self.year_dir = devkit / f"VOC{year}"
        ids_file = self.year_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise InputFileError(f"VOC image set not found: {ids_file}")
        image_ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        self.records = [self._record(image_id) for image_id in image_ids]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{'image_id' str, 'file_name' JPEG path, 'height', 'width' pixels, 'boxes' (n, 4)
        float32 xyxy 0-based inclusive pixels, 'labels' (n,) int32, 'difficult' (n,) bool}``."""
        return self.records[index]

    def load_image(self, index: int) -> np.ndarray:
        """The ``index``-th image as uint8 RGB (H, W, 3)."""
        with Image.open(self.records[index]["file_name"]) as im:
            return np.asarray(im.convert("RGB"))

    def _record(self, image_id: str) -> dict[str, Any]:
        file_name = str(self.year_dir / "JPEGImages" / f"{image_id}.jpg")
        xml_path = self.year_dir / "Annotations" / f"{image_id}.xml"
        try:
            record = parse_voc_xml(ET.parse(xml_path).getroot(), file_name)
        except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
            raise VocFormatError(f"malformed VOC annotation {xml_path}: {e}") from e
        return {"image_id": image_id, "file_name": file_name, **record}


def parse_voc_xml(root: ET.Element, image_path: str) -> dict[str, Any]:
    """Height, width and objects of one ``<annotation>`` element (see the module docstring)."""
    size = root.find("size")
    if size is not None:
        width, height = int(size.find("width").text), int(size.find("height").text)
    else:
        with Image.open(image_path) as im:
            width, height = im.size
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = obj.find("name").text.strip()
        if name not in VOC_CLASSES:
            continue
        flag = obj.find("difficult")
        bndbox = obj.find("bndbox")
        boxes.append(
            [int(float(bndbox.find(k).text)) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
        )
        labels.append(VOC_CLASSES.index(name))
        difficult.append(flag is not None and int(flag.text) != 0)
    return {
        "height": height,
        "width": width,
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int32),
        "difficult": np.array(difficult, bool),
    }
