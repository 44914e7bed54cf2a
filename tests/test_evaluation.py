"""COCO and VOC metrics against hand-computed cases; the VOC reader; the synthetic data set."""

from __future__ import annotations

import json
import math
import pathlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ssd_jax.data import synthetic
from ssd_jax.data.voc import VOC_CLASSES, VocSource
from ssd_jax.evaluation import (
    coco_evaluate,
    detections_to_coco_results,
    format_metrics_table,
    voc_map,
    write_results_json,
)
from ssd_jax.evaluation.voc import average_precision, box_iou_voc

# ---------------------------------------------------------------------------------------------
# COCO

# (image id, category id, [x, y, w, h]); sizes cover COCO's small (< 32²), medium and large.
GT_BOXES = [
    (1, 3, [10, 10, 30, 40]),
    (1, 7, [50, 50, 40, 30]),
    (2, 7, [5, 5, 60, 60]),
    (3, 3, [20, 30, 10, 10]),
    (3, 3, [0, 0, 90, 90]),
]
NAMES = {3: "cat", 7: "dog"}


def write_gt(tmp_path: pathlib.Path, cat_order: tuple[int, ...] = (3, 7)) -> str:
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2, 3)
        ],
        "categories": [{"id": c, "name": NAMES[c]} for c in cat_order],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (i, c, b) in enumerate(GT_BOXES)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path)


def perfect_detections(cat_ids: list[int], only_cat: int | None = None) -> list[dict]:
    """Per image (ids 1..3) the ground truth as xyxy detections, labels = index in cat_ids."""
    dets = []
    for image_id in (1, 2, 3):
        rows = [(b, c) for i, c, b in GT_BOXES if i == image_id and only_cat in (None, c)]
        dets.append(
            {
                "boxes": np.array(
                    [[x, y, x + w, y + h] for (x, y, w, h), _ in rows], np.float32
                ).reshape(-1, 4),
                "scores": np.linspace(0.9, 0.5, len(rows)),
                "labels": np.array([cat_ids.index(c) for _, c in rows], np.int64),
            }
        )
    return dets


def test_xyxy_to_coco_xywh_and_category_mapping():
    dets = [
        {
            "boxes": np.array([[10.5, 20, 30, 60]]),
            "scores": np.array([0.8]),
            "labels": np.array([1]),
        }
    ]
    (result,) = detections_to_coco_results([42], dets, [3, 7])
    assert result == {
        "image_id": 42,
        "category_id": 7,
        "bbox": [10.5, 20.0, 19.5, 40.0],
        "score": pytest.approx(0.8),
    }


@pytest.mark.parametrize("cat_order", [(3, 7), (7, 3)])
def test_perfect_detections_give_map_one(tmp_path, cat_order):
    gt = COCO(write_gt(tmp_path, cat_order))
    cat_ids = gt.getCatIds()
    assert cat_ids == list(cat_order)  # the data set's category order = label order
    results = detections_to_coco_results([1, 2, 3], perfect_detections(cat_ids), cat_ids)
    metrics = coco_evaluate(gt, results)
    assert metrics["bbox_mAP"] == pytest.approx(1.0)
    assert metrics["bbox_mAP_50"] == pytest.approx(1.0)
    assert metrics["AR@100"] == pytest.approx(1.0)
    assert metrics["per_class_AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert list(metrics)[:12] == [
        "bbox_mAP",
        "bbox_mAP_50",
        "bbox_mAP_75",
        "bbox_mAP_s",
        "bbox_mAP_m",
        "bbox_mAP_l",
        "AR@1",
        "AR@10",
        "AR@100",
        "AR_s@100",
        "AR_m@100",
        "AR_l@100",
    ]


@pytest.mark.parametrize("cat_order", [(3, 7), (7, 3)])
def test_label_maps_to_category_in_order(tmp_path, cat_order):
    gt = COCO(write_gt(tmp_path, cat_order))
    cat_ids = gt.getCatIds()
    dog_only = detections_to_coco_results(
        [1, 2, 3], perfect_detections(cat_ids, only_cat=7), cat_ids
    )
    assert {r["category_id"] for r in dog_only} == {7}
    metrics = coco_evaluate(gt, dog_only)
    assert metrics["per_class_AP"]["dog"] == pytest.approx(1.0)
    assert metrics["per_class_AP"]["cat"] == pytest.approx(0.0)
    # The same boxes under the other label score nothing.
    swapped = [dict(r, category_id=3) for r in dog_only]
    assert coco_evaluate(gt, swapped)["bbox_mAP"] == pytest.approx(0.0)


def test_empty_results_and_custom_class_names(tmp_path):
    path = write_gt(tmp_path)
    metrics = coco_evaluate(path, [], class_names=["c3", "c7"])
    assert all(v in (0.0, -1.0) for k, v in metrics.items() if k != "per_class_AP")
    assert metrics["per_class_AP"] == {"c3": 0.0, "c7": 0.0}
    with pytest.raises(ValueError, match="class names"):
        coco_evaluate(path, [], class_names=["only one"])


def test_per_class_ap_is_nan_without_ground_truth(tmp_path):
    coco = json.loads(pathlib.Path(write_gt(tmp_path)).read_text())
    coco["categories"].append({"id": 9, "name": "bird"})
    path = tmp_path / "with_bird.json"
    path.write_text(json.dumps(coco))
    gt = COCO(str(path))
    results = detections_to_coco_results(
        [1, 2, 3], perfect_detections(gt.getCatIds()), gt.getCatIds()
    )
    per_class = coco_evaluate(gt, results)["per_class_AP"]
    assert math.isnan(per_class["bird"]) and per_class["dog"] == pytest.approx(1.0)


def test_results_json_round_trip_and_table(tmp_path):
    gt = COCO(write_gt(tmp_path))
    results = detections_to_coco_results(
        [1, 2, 3], perfect_detections(gt.getCatIds()), gt.getCatIds()
    )
    path = tmp_path / "out" / "results.bbox.json"
    write_results_json(path, results)
    assert json.loads(path.read_text()) == results
    metrics = coco_evaluate(gt, results)
    assert "category_id" in results[0] and "id" not in results[0]  # caller's dicts untouched
    table = format_metrics_table(metrics)
    assert "bbox_mAP_50" in table and "AR_l@100" in table and "dog" in table


# ---------------------------------------------------------------------------------------------
# VOC


def det(boxes, scores, labels=None) -> dict:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.array(labels)
    return {"boxes": boxes, "scores": np.array(scores, np.float32), "labels": labels}


def ann(boxes, labels=None, difficult=None) -> dict:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.array(labels)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.array(difficult)
    return {"boxes": boxes, "labels": labels, "difficult": difficult}


A, B, C = [0, 0, 19, 19], [40, 40, 69, 59], [80, 0, 99, 29]


@pytest.mark.parametrize("mode", ["area", "11points"])
def test_voc_perfect_detector(mode):
    result = voc_map(
        [det([A, B], [0.9, 0.8]), det([C], [0.7], [1])],
        [ann([A, B]), ann([C], [1])],
        num_classes=2,
        mode=mode,
    )
    assert result["mAP"] == pytest.approx(1.0)
    np.testing.assert_allclose(result["per_class_AP"], [1.0, 1.0])
    np.testing.assert_array_equal(result["num_gts"], [2, 1])


def test_voc_missed_object():
    # 2 gts, 1 found: one point (recall 0.5, precision 1).
    # area: envelope 1 on recall (0, 0.5], 0 beyond → AP = 0.5 · 1 = 0.5.
    # 11points: recall ≥ t for t = 0, 0.1, …, 0.5 (6 of 11) → AP = 6/11 ≈ 0.545.
    dets, anns = [det([A], [0.9])], [ann([A, B])]
    assert voc_map(dets, anns, 1, mode="area")["mAP"] == pytest.approx(0.5)
    assert voc_map(dets, anns, 1, mode="11points")["mAP"] == pytest.approx(6 / 11)
    assert voc_map(dets, anns, 1)["per_class_recall"][0] == pytest.approx(0.5)


def test_voc_duplicate_is_false_positive():
    # gts A, B; detections by score: A (TP), A again (FP: A is taken), B (TP).
    # cumulative tp 1,1,2 fp 0,1,1 → (recall, precision) = (.5, 1), (.5, .5), (1, 2/3).
    # area: 0.5 · 1 + 0.5 · 2/3 = 5/6.  11points: 6 thresholds ≤ .5 at 1, 5 above at 2/3
    # → (6 + 5 · 2/3) / 11 = 28/33.
    dets, anns = [det([A, A, B], [0.9, 0.8, 0.7])], [ann([A, B])]
    assert voc_map(dets, anns, 1, mode="area")["mAP"] == pytest.approx(5 / 6)
    assert voc_map(dets, anns, 1, mode="11points")["mAP"] == pytest.approx(28 / 33)


def test_voc_duplicate_does_not_fall_back_to_another_gt():
    # mmdetection / VOC devkit: a detection goes to its highest-IoU gt; if that gt is taken the
    # detection is a FP even when it also overlaps a free gt by ≥ 0.5.
    g1, g2 = [0, 0, 99, 99], [0, 0, 99, 79]  # IoU(g1, g2) = 0.8
    d_first, d_second = [0, 0, 99, 99], [0, 0, 99, 94]  # both closest to g1
    result = voc_map([det([d_first, d_second], [0.9, 0.8])], [ann([g1, g2])], 1)
    assert result["per_class_recall"][0] == pytest.approx(0.5)


def test_voc_difficult_is_ignored():
    # D is difficult: the detection on it (ranked first) is neither TP nor FP, so the curve is
    # (recall 0, precision 0), (1, 1) → AP 1. Counted as a FP it would give 0.5.
    D = [40, 40, 69, 59]
    anns = [ann([A, D], difficult=[False, True])]
    result = voc_map([det([D, A], [0.95, 0.9])], anns, 1)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["num_gts"][0] == 1
    # Missing the difficult object costs no recall.
    assert voc_map([det([A], [0.9])], anns, 1)["mAP"] == pytest.approx(1.0)


def test_voc_class_without_gt_excluded_from_mean():
    dets = [det([A, C], [0.9, 0.8], [0, 1])]
    result = voc_map(dets, [ann([A], [0])], num_classes=2)
    assert result["mAP"] == pytest.approx(1.0)
    assert math.isnan(result["per_class_AP"][1]) and result["num_dets"][1] == 1


def test_voc_legacy_coordinates():
    # gt 10×10 px (0..9 inclusive), detection its top half: legacy IoU 50/100 = 0.5 (TP);
    # without +1 the boxes are 9×9 and 9×4: IoU 36/81 < 0.5 (FP).
    gt, half = [0, 0, 9, 9], [0, 0, 9, 4]
    assert box_iou_voc(np.array([half]), np.array([gt]))[0, 0] == pytest.approx(0.5)
    dets, anns = [det([half], [0.9])], [ann([gt])]
    assert voc_map(dets, anns, 1)["mAP"] == pytest.approx(1.0)
    assert voc_map(dets, anns, 1, use_legacy_coordinate=False)["mAP"] == pytest.approx(0.0)


def test_average_precision_modes():
    recall, precision = np.array([0.2, 0.4]), np.array([1.0, 0.5])
    # area: 0.2 · 1 + 0.2 · 0.5 = 0.3; 11points: t=0,.1,.2 → 1; t=.3,.4 → .5 → 4/11.
    assert average_precision(recall, precision, "area") == pytest.approx(0.3)
    assert average_precision(recall, precision, "11points") == pytest.approx(4 / 11)
    with pytest.raises(ValueError):
        average_precision(recall, precision, "101points")


# ---------------------------------------------------------------------------------------------
# VOC reader

VOC_XML = """<annotation>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
  <object><name>person</name><difficult>1</difficult>
    <bndbox><xmin>10.7</xmin><ymin>5</ymin><xmax>49.2</xmax><ymax>40</ymax></bndbox></object>
  <object><name>unicorn</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
  <object><name>cat</name>
    <bndbox><xmin>3</xmin><ymin>4</ymin><xmax>6</xmax><ymax>8</ymax></bndbox></object>
</annotation>"""


def write_voc(root: pathlib.Path, xmls: dict[str, str], split: str = "test") -> pathlib.Path:
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    (year / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(xmls) + "\n")
    for image_id, xml in xmls.items():
        (year / "Annotations" / f"{image_id}.xml").write_text(xml)
        Image.new("RGB", (30, 20), (255, 0, 0)).save(year / "JPEGImages" / f"{image_id}.jpg")
    return year


def test_voc_source(tmp_path):
    no_size = "<annotation><filename>x.jpg</filename></annotation>"
    write_voc(tmp_path, {"000001": VOC_XML, "000002": no_size})
    source = VocSource(tmp_path, split="test", year="2007")
    assert len(source) == 2 and source.class_names == VOC_CLASSES and len(VOC_CLASSES) == 20
    r = source[0]
    assert (r["image_id"], r["height"], r["width"]) == ("000001", 40, 50)
    assert r["file_name"].endswith("VOC2007/JPEGImages/000001.jpg")
    # int(float(v)) - 1 on all four coordinates; "unicorn" skipped; missing <difficult> → 0.
    np.testing.assert_array_equal(r["boxes"], [[0, 1, 19, 29], [9, 4, 48, 39], [2, 3, 5, 7]])
    assert r["boxes"].dtype == np.float32 and r["labels"].dtype == np.int32
    np.testing.assert_array_equal(
        r["labels"], [VOC_CLASSES.index(n) for n in ("dog", "person", "cat")]
    )
    np.testing.assert_array_equal(r["difficult"], [False, True, False])
    empty = source[1]  # no <size>: read from the 30×20 JPEG
    assert (empty["height"], empty["width"]) == (20, 30) and empty["boxes"].shape == (0, 4)
    assert source.load_image(1).shape == (20, 30, 3)
    assert len(VocSource(tmp_path / "VOCdevkit")) == 2  # root may be VOCdevkit itself


@pytest.mark.parametrize(
    "xml",
    [
        "<annotation><object>",
        "<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
    ],
)
def test_voc_source_malformed_xml(tmp_path, xml):
    write_voc(tmp_path, {"000001": VOC_XML, "000007": xml})
    with pytest.raises(ValueError, match="000007.xml"):
        VocSource(tmp_path)


def test_voc_source_missing_split(tmp_path):
    write_voc(tmp_path, {"000001": VOC_XML})
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        VocSource(tmp_path, split="trainval")


# ---------------------------------------------------------------------------------------------
# Synthetic shapes


def tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    return synthetic.write_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=40, num_val=6, image_size=96, seed=0
    )


def test_synthetic_is_deterministic(shapes, tmp_path):
    again = synthetic.write_shapes_dataset(
        tmp_path / "again", num_train=40, num_val=6, image_size=96, seed=0
    )
    first = tree_bytes(pathlib.Path(shapes["root"]))
    assert len(first) == 40 + 6 + 2 and first == tree_bytes(pathlib.Path(again["root"]))
    # The train split does not depend on the val count; another seed differs.
    other = synthetic.write_shapes_dataset(
        tmp_path / "other", num_train=40, num_val=1, image_size=96, seed=0
    )
    assert (
        pathlib.Path(other["train_annotations"]).read_bytes()
        == pathlib.Path(shapes["train_annotations"]).read_bytes()
    )
    reseeded = synthetic.write_shapes_dataset(
        tmp_path / "seed1", num_train=2, num_val=0, image_size=96, seed=1
    )
    assert (
        pathlib.Path(reseeded["train_images"], "000000.jpg").read_bytes()
        != first["train/000000.jpg"]
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_coco_annotations(shapes, split):
    coco = COCO(shapes[f"{split}_annotations"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(synthetic.SHAPE_CLASSES)
    per_image = Counter(a["image_id"] for a in coco.dataset["annotations"])
    assert max(per_image.values()) <= synthetic.MAX_OBJECTS
    for info in coco.dataset["images"]:
        with Image.open(pathlib.Path(shapes[f"{split}_images"], info["file_name"])) as im:
            assert im.size == (info["width"], info["height"]) == (96, 96)
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
        assert min(w, h) >= synthetic.MIN_BOX_SIDE and 0 < a["area"] <= w * h


def test_synthetic_classes_balanced(shapes):
    coco = COCO(shapes["train_annotations"])
    counts = Counter(a["category_id"] for a in coco.dataset["annotations"])
    assert len(coco.dataset["annotations"]) >= 2 * len(coco.dataset["images"])
    mean = len(coco.dataset["annotations"]) / len(synthetic.SHAPE_CLASSES)
    assert all(0.6 * mean <= counts[c] <= 1.4 * mean for c in coco.getCatIds())


def test_synthetic_mask_is_the_polygon():
    # The box is taken from this mask: it must cover the drawn polygon to within a pixel.
    rng = np.random.default_rng(3)
    polygon = synthetic.shape_polygon(rng, synthetic.SHAPE_CLASSES.index("star"), 256)
    ys, xs = np.nonzero(synthetic.shape_mask(polygon, 256))
    lo, hi = polygon.min(0).clip(0, 255), polygon.max(0).clip(0, 255)
    np.testing.assert_allclose([xs.min(), ys.min()], lo, atol=1)
    np.testing.assert_allclose([xs.max(), ys.max()], hi, atol=1)


def test_synthetic_cli(tmp_path, capsys):
    synthetic.main(
        [
            str(tmp_path / "cli"),
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--image-size",
            "64",
            "--seed",
            "5",
        ]
    )
    assert "writing 2 train + 1 val images" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "train").glob("*.jpg"))) == 2
