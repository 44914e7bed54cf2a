"""COCO/TFDS sources and the grain train/eval loaders on tiny datasets written to tmp dirs."""

from __future__ import annotations

import collections
import json
import logging
import pathlib

import cv2
import numpy as np
import pytest

from ssd_jax.config import load_config
from ssd_jax.data.coco import CocoSource
from ssd_jax.data.pipeline import make_eval_loader, make_train_loader, pad_boxes

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "ssd300_coco.py"
INPUT_SIZE = 64

# (id, file, height, width); image 6 is a corrupt file.
IMAGES = [
    (1, "a.jpg", 64, 96),
    (2, "b.png", 80, 80),
    (3, "c.jpg", 24, 20),
    (4, "d.png", 88, 72),
    (5, "e.jpg", 64, 64),
    (6, "f.jpg", 70, 90),
]
# Categories listed out of id order: labels follow sorted ids (1 → 0 "person", 3 → 1 "cat").
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 1, "name": "person"}]


def _ann(ann_id, image_id, bbox, category_id=1, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        **extra,
    }


ANNOTATIONS = [
    _ann(1, 1, [10, 10, 30, 20]),  # kept, label 0
    _ann(2, 1, [0, 0, 50, 50], iscrowd=1),  # crowd
    _ann(3, 1, [5, 5, 0, 10]),  # zero width: empty intersection
    _ann(4, 1, [200, 10, 20, 20]),  # outside the image: empty intersection
    _ann(14, 1, [5, 5, 0.5, 10]),  # w < 1 → degenerate
    _ann(5, 1, [10, 10, 20, 20], category_id=99),  # unknown category
    _ann(6, 1, [10, 10, 20, 20], ignore=1),  # ignore flag
    _ann(7, 1, [40, 30, 50, 30], category_id=3),  # kept, label 1
    _ann(8, 3, [2, 2, 10, 10]),  # tiny image (20 px wide)
    _ann(9, 4, [5, 5, 40, 40], iscrowd=1),  # image 4: only a crowd box
    _ann(10, 5, [4, 8, 20, 30]),  # kept
    _ann(11, 5, [50, 40, 30, 30], category_id=3),  # kept, crosses the border, not clipped
    _ann(12, 6, [10, 10, 40, 40]),  # kept (its image file is corrupt)
    _ann(13, 999, [10, 10, 40, 40]),  # unknown image
]


def write_dataset(root: pathlib.Path, images=IMAGES, annotations=ANNOTATIONS) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for _, name, h, w in images:
        cv2.imwrite(str(root / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (root / "f.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ann_file = root / "ann.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": n, "height": h, "width": w} for i, n, h, w in images
                ],
                "annotations": annotations,
                "categories": CATEGORIES,
            }
        )
    )
    return ann_file


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("coco")
    write_dataset(root)
    return root


@pytest.fixture(scope="module")
def train_source(dataset) -> CocoSource:
    return CocoSource(dataset / "ann.json", dataset, filter_train=True)


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, [f"input_size={INPUT_SIZE}", "train.max_boxes=3"])


def test_coco_source_parses_as_mmdetection(dataset, caplog):
    with caplog.at_level(logging.WARNING):
        source = CocoSource(dataset / "ann.json", dataset)
    assert source.cat_ids == [1, 3] and source.class_names == ["person", "cat"]
    assert [source[i]["image_id"] for i in range(len(source))] == [1, 2, 3, 4, 5, 6]
    assert source.dropped == collections.Counter(
        degenerate=1, empty_intersection=2, unknown_category=1, ignore=1, unknown_image=1
    )
    # crowd boxes are mmdetection's ignored instances: kept apart, counted, not warned about
    assert source.crowd == 2
    np.testing.assert_array_equal(source[0]["crowd_boxes"], [[0, 0, 50, 50]])
    np.testing.assert_array_equal(source[3]["crowd_boxes"], [[5, 5, 45, 45]])
    assert source[1]["crowd_boxes"].shape == (0, 4)
    first = source[0]
    assert first["file_name"] == str(dataset / "a.jpg")
    assert (first["height"], first["width"]) == (64, 96)
    np.testing.assert_array_equal(first["boxes"], [[10, 10, 40, 30], [40, 30, 90, 60]])
    np.testing.assert_array_equal(first["labels"], [0, 1])
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int32
    np.testing.assert_array_equal(source[4]["boxes"], [[4, 8, 24, 38], [50, 40, 80, 70]])
    assert source[3]["boxes"].shape == (0, 4) and source[3]["labels"].shape == (0,)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "ann.json" in m and "annotation id 4 " in m and "empty_intersection" in m for m in messages
    )
    assert sum("dropped" in m for m in messages) == sum(source.dropped.values()) == 6


def test_coco_source_filter_train(train_source):
    """mmdet filter_data: no annotation of a listed category, or min side < 32, leaves."""
    assert [train_source[i]["image_id"] for i in range(len(train_source))] == [1, 4, 5, 6]
    assert train_source.filtered == collections.Counter(no_annotations=1, too_small=1)
    assert len(train_source[1]["labels"]) == 0  # crowd-only image stays, as in mmdetection


def test_coco_source_rejects_duplicate_ids_and_truncated_json(tmp_path):
    images = IMAGES[:2] + [(1, "dup.jpg", 64, 64)]
    ann_file = write_dataset(tmp_path, images=images, annotations=[])
    with pytest.raises(ValueError, match=r"ann\.json: images\[2\] repeats id 1 of images\[0\]"):
        CocoSource(ann_file, tmp_path)
    ann_file.write_text(ann_file.read_text()[:50])
    with pytest.raises(ValueError, match=r"ann\.json: unreadable or truncated JSON"):
        CocoSource(ann_file, tmp_path)


def test_pad_boxes_keeps_the_largest_in_order():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 5, 5], [0, 0, 2, 2], [0, 0, 4, 4]], np.float32)
    out, labels, valid = pad_boxes(boxes, np.arange(4, dtype=np.int32), 2)
    np.testing.assert_array_equal(out, boxes[[1, 3]])
    np.testing.assert_array_equal(labels, [1, 3])
    assert valid.all()
    out, labels, valid = pad_boxes(boxes[:1], np.zeros(1, np.int32), 3)
    np.testing.assert_array_equal(valid, [True, False, False])
    assert out.shape == (3, 4) and not out[1:].any()


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_layout_and_corrupt_image_skipped(train_source, cfg, caplog):
    with caplog.at_level(logging.WARNING):
        loader = make_train_loader(train_source, cfg, global_batch_size=4, seed=3, num_workers=0)
        batches = take(loader, 3)
    batch = batches[0]
    assert batch["image"].shape == (4, INPUT_SIZE, INPUT_SIZE, 3)
    assert batch["image"].dtype == np.float32  # photometric distortion: unclipped floats
    assert batch["boxes"].shape == (4, 3, 4) and batch["boxes"].dtype == np.float32
    assert batch["labels"].shape == (4, 3) and batch["labels"].dtype == np.int32
    assert batch["valid"].shape == (4, 3) and batch["valid"].dtype == bool
    assert batch["image_id"].shape == (4,) and batch["image_id"].dtype == np.int64
    ids = np.concatenate([b["image_id"] for b in batches])
    assert set(ids.tolist()) <= {1, 4, 5} and 6 not in ids
    assert loader.skipped_images >= 2  # 12 examples need 4 epochs of 3 readable images
    assert any("f.jpg" in r.getMessage() for r in caplog.records)
    for b in batches:
        boxes = b["boxes"][b["valid"]]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= INPUT_SIZE)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        assert not b["boxes"][~b["valid"]].any()
        assert not b["valid"][b["image_id"] == 4].any()  # the crowd-only image


def test_train_batches_do_not_depend_on_worker_count(train_source, cfg):
    serial = take(
        make_train_loader(train_source, cfg, global_batch_size=4, seed=5, num_workers=0), 3
    )
    with make_train_loader(train_source, cfg, global_batch_size=4, seed=5, num_workers=2) as loader:
        parallel = take(loader, 3)
    assert_batches_equal(serial, parallel)
    other_seed = take(
        make_train_loader(train_source, cfg, global_batch_size=4, seed=6, num_workers=0), 3
    )
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(serial, other_seed))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_state_restores_the_next_batches(train_source, cfg, num_workers):
    def loader_():
        return make_train_loader(
            train_source, cfg, global_batch_size=4, seed=7, num_workers=num_workers
        )

    with loader_() as loader:
        take(loader, 2)
        state = json.loads(json.dumps(loader.get_state()))
        expected = take(loader, 3)
    with loader_() as resumed:
        resumed.set_state(state)
        assert resumed.skipped_images == state["skipped_images"]
        assert_batches_equal(take(resumed, 3), expected)


def test_train_processes_read_disjoint_shards(train_source, cfg):
    ids = []
    for p in range(2):
        loader = make_train_loader(
            train_source,
            cfg,
            global_batch_size=4,
            process_index=p,
            process_count=2,
            seed=0,
            num_workers=0,
        )
        batches = take(loader, 2)
        assert batches[0]["image"].shape[0] == 2
        ids.append({int(i) for b in batches for i in b["image_id"]})
    assert ids[0] and ids[1] and not ids[0] & ids[1]


def test_eval_loader_in_order_with_padding(dataset, cfg):
    source = CocoSource(dataset / "ann.json", dataset)
    loader = make_eval_loader(source, cfg, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    ids = np.concatenate([b["image_id"] for b in batches])
    valid = np.concatenate([b["valid_image"] for b in batches])
    np.testing.assert_array_equal(ids, [1, 2, 3, 4, 5, -1, -1, -1])  # 6 is corrupt
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0, 0, 0])
    assert loader.skipped_images == 1
    first = batches[0]
    assert first["image"].shape == (4, INPUT_SIZE, INPUT_SIZE, 3)
    assert first["image"].dtype == np.uint8
    np.testing.assert_array_equal(first["ori_shape"], [[64, 96], [80, 80], [24, 20], [88, 72]])
    np.testing.assert_allclose(first["scale_factor"][0], [INPUT_SIZE / 96, INPUT_SIZE / 64])
    assert first["scale_factor"].dtype == np.float32


def test_eval_loader_splits_processes_evenly(dataset, cfg):
    source = CocoSource(dataset / "ann.json", dataset)
    per_process = [
        list(make_eval_loader(source, cfg, batch_size=2, process_index=p, process_count=4))
        for p in range(4)
    ]
    assert {len(batches) for batches in per_process} == {1}
    ids = [b["image_id"][b["valid_image"]].tolist() for batches in per_process for b in batches]
    assert ids == [[1, 2], [3, 4], [5], []]  # 6 (corrupt) would be the second of process 2
