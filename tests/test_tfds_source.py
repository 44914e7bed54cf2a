"""``TfdsSource``: TFDS detection data sets (mock data and prepared files, with and without
TensorFlow) as training records."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from conftest import require
from ssd_jax.config import load_config
from ssd_jax.data.pipeline import make_train_loader

tfds = require("tensorflow_datasets")  # in requirements.txt; CI fails without it

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "ssd300_coco.py"
INPUT_SIZE = 64


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, [f"input_size={INPUT_SIZE}", "train.max_boxes=3"])


class SsdJaxCocoLike(tfds.core.GeneratorBasedBuilder):
    """COCO's detection features with NumPy dtypes (TFDS's own COCO builder needs TensorFlow).

    The objects have a fixed length (2) only because mock_data draws each field of a
    variable-length Sequence with its own random length.
    """

    VERSION = tfds.core.Version("1.0.0")
    IMAGES: list = []  # (jpeg path, image id, [(ymin, xmin, ymax, xmax, label, crowd), ...])

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "image/id": np.int64,
                    "objects": tfds.features.Sequence(
                        {
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(names=["person", "cat", "dog"]),
                            "is_crowd": np.bool_,
                        },
                        length=2,
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for path, image_id, objects in self.IMAGES:
            yield (
                image_id,
                {
                    "image": path,
                    "image/id": image_id,
                    "objects": {
                        "bbox": [tfds.features.BBox(*o[:4]) for o in objects],
                        "label": [o[4] for o in objects],
                        "is_crowd": [o[5] for o in objects],
                    },
                },
            )


def test_tfds_source_on_mock_data():
    from ssd_jax.data.tfds_source import TfdsSource

    with tfds.testing.mock_data(num_examples=5):
        source = TfdsSource("ssd_jax_coco_like", split="train")
        raw = tfds.data_source("ssd_jax_coco_like", split="train")
        assert len(source) == 5 and source.class_names == ["person", "cat", "dog"]
        for i in range(len(source)):
            record, example = source[i], raw[i]
            image = example["image"]
            h, w = image.shape[:2]
            np.testing.assert_array_equal(record["image"], image)
            assert (record["height"], record["width"]) == (h, w)
            assert record["image_id"] == int(example["image/id"])
            yxyx = np.asarray(example["objects"]["bbox"]).reshape(-1, 4)
            boxes = yxyx[:, [1, 0, 3, 2]] * [w, h, w, h]
            keep = (
                (boxes[:, 2] - boxes[:, 0] >= 1)
                & (boxes[:, 3] - boxes[:, 1] >= 1)
                & ~np.asarray(example["objects"]["is_crowd"], bool)
            )
            np.testing.assert_allclose(record["boxes"], boxes[keep], rtol=1e-6)
            np.testing.assert_array_equal(
                record["labels"], np.asarray(example["objects"]["label"])[keep]
            )
            assert record["boxes"].dtype == np.float32 and record["labels"].dtype == np.int32


def test_tfds_source_reads_prepared_files_without_tensorflow(tmp_path, cfg):
    """A prepared ArrayRecord dataset named with its version is read from its files alone."""
    from ssd_jax.data.tfds_source import TfdsSource

    rng = np.random.default_rng(0)
    SsdJaxCocoLike.IMAGES = []
    for i, (h, w) in enumerate([(60, 80), (70, 50)]):
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        SsdJaxCocoLike.IMAGES.append(
            (str(path), 100 + i, [(0.1, 0.25, 0.5, 0.75, 1, False), (0.0, 0.0, 1.0, 1.0, 0, True)])
        )
    SsdJaxCocoLike(
        data_dir=str(tmp_path / "tfds"), file_format="array_record"
    ).download_and_prepare()
    source = TfdsSource("ssd_jax_coco_like:1.0.0", split="train", data_dir=tmp_path / "tfds")
    records = sorted((source[i] for i in range(len(source))), key=lambda r: r["image_id"])
    assert [r["image_id"] for r in records] == [100, 101]
    assert records[0]["image"].shape == (60, 80, 3) and records[0]["image"].dtype == np.uint8
    np.testing.assert_allclose(records[0]["boxes"], [[20, 6, 60, 30]], rtol=1e-6)
    np.testing.assert_array_equal(records[0]["labels"], [1])  # the crowd box is not a gt box
    np.testing.assert_allclose(records[0]["crowd_boxes"], [[0, 0, 80, 60]], rtol=1e-6)
    batch = next(make_train_loader(source, cfg, global_batch_size=2, seed=0, num_workers=0))
    assert batch["image"].shape == (2, INPUT_SIZE, INPUT_SIZE, 3)
    assert sorted(batch["image_id"].tolist()) == [100, 101]


_WITHOUT_TENSORFLOW = """
import sys

class NoTensorFlow:  # as if tensorflow were not installed (the export requirements install it)
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
from ssd_jax.data.tfds_source import TfdsSource

TfdsSource("coco/2017", split="train")
"""


def test_tfds_coco_without_tensorflow_says_what_to_install():
    """Without TensorFlow, a TFDS name that needs its builder says what to install."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: TFDS needs TensorFlow"), proc.stderr[-2000:]
    assert "pip install tensorflow-cpu" in last
