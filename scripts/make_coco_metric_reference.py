"""mmdetection's own COCO numbers for the SSD300 fixture's detections: the reference of
tests/test_eval_script.py::test_eval_script_matches_mmdetection_on_fixture.

Writes ``tests/data/coco_metric/``: ``instances.json`` (a COCO ground truth for the fixture's
two images, made around mmdetection's detections: boxes shifted a few pixels off them so that AP
depends on the IoU threshold, plus objects nothing was detected on; the 80 COCO categories with
their real ids) and ``reference.json``: what mmdetection 3.3.0's ``CocoMetric`` (metric
``bbox``, classwise, its default proposal numbers 100/300/1000) gives for the fixture's
``det_*`` arrays against it: the 12 numbers as it reports them (rounded to 3 decimals), the same
12 unrounded (``coco_eval.stats`` of that very evaluation), and the per-class AP (rounded, as it
reports them).

Run with mmdetection's environment (see ../shared/mmdet_reference/README.md), from the
repository root:

    /tmp/mmdet_ref/venv/bin/python scripts/make_coco_metric_reference.py
"""

from __future__ import annotations

import json
import os
import runpy

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "coco_metric")
FIXTURES = os.environ.get("SSD_JAX_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
COCO_IDS = runpy.run_path(os.path.join(REPO, "ssd_jax", "coco_classes.py"))["COCO_CATEGORY_IDS"]

# (image, index of a reference detection (-1: none), xyxy offset in px, label): ground truth
# boxes shifted off mmdetection's detections by a few pixels (IoU between 0.5 and 0.95, so AP
# depends on the IoU threshold), plus objects nothing was detected on (offset = the box).
GT_PLAN = [
    (0, 0, (8, -6, 5, 10), None),
    (0, 2, (-3, 4, -12, 2), None),
    (0, 6, (20, 15, -10, -25), None),
    (0, 8, (1, 1, -1, -1), None),
    (0, -1, (30, 40, 90, 110), 66),
    (0, -1, (300, 20, 330, 52), 0),
    (1, 0, (-5, 3, 6, -4), None),
    (1, 1, (15, -10, 5, 20), None),
    (1, 7, (2, 2, -2, -2), None),
    (1, -1, (10, 300, 70, 355), 44),
]
METRIC_ITEMS = (
    "mAP",
    "mAP_50",
    "mAP_75",
    "mAP_s",
    "mAP_m",
    "mAP_l",
    "AR@100",
    "AR@300",
    "AR@1000",
    "AR_s@1000",
    "AR_m@1000",
    "AR_l@1000",
)


def ground_truth(ref: dict, classes: tuple[str, ...]) -> dict:
    images = [
        {
            "id": i + 1,
            "file_name": f"{i}.png",
            "height": int(ref[f"image_{i}"].shape[0]),
            "width": int(ref[f"image_{i}"].shape[1]),
        }
        for i in (0, 1)
    ]
    annotations = []
    for image, det_index, offset, label in GT_PLAN:
        if det_index >= 0:
            box = ref[f"det_bboxes_{image}"][det_index] + np.array(offset, np.float32)
            label = int(ref[f"det_labels_{image}"][det_index])
        else:
            box = np.array(offset, np.float32)
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image + 1,
                "category_id": COCO_IDS[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
        )
    categories = [{"id": c, "name": n} for c, n in zip(COCO_IDS, classes, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main() -> None:
    import mmdet
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.evaluation import CocoMetric
    from mmdet.evaluation.metrics import coco_metric

    ref = dict(np.load(os.path.join(FIXTURES, "ssd300_coco", "reference.npz")))
    classes = tuple(CocoDataset.METAINFO["classes"])
    os.makedirs(OUT, exist_ok=True)
    ann_file = os.path.join(OUT, "instances.json")
    with open(ann_file, "w") as f:
        json.dump(ground_truth(ref, classes), f, indent=1)

    # The unrounded numbers of the same evaluation: keep the COCOeval that CocoMetric summarises.
    evals = []
    cocoeval = coco_metric.COCOeval
    summarize = cocoeval.summarize

    def keep(self):
        summarize(self)
        evals.append(self)

    cocoeval.summarize = keep
    metric = CocoMetric(ann_file=ann_file, metric="bbox", classwise=True, metric_items=METRIC_ITEMS)
    metric.dataset_meta = {"classes": classes}
    samples = []
    for i in (0, 1):
        samples.append(
            {
                "img_id": i + 1,
                "ori_shape": tuple(int(v) for v in ref[f"ori_shape_{i}"]),
                "pred_instances": {
                    "bboxes": torch.from_numpy(ref[f"det_bboxes_{i}"]),
                    "scores": torch.from_numpy(ref[f"det_scores_{i}"]),
                    "labels": torch.from_numpy(ref[f"det_labels_{i}"].astype(np.int64)),
                },
            }
        )
    metric.process({}, samples)
    reported = metric.evaluate(size=len(samples))
    cocoeval.summarize = summarize
    assert len(evals) == 1, len(evals)
    stats = [float(v) for v in evals[0].stats]
    names = [f"bbox_{m}" if m.startswith("mAP") else m for m in METRIC_ITEMS]
    # COCOeval.stats order: AP, AP50, AP75, APs, APm, APl, AR@1, AR@10, AR@100, ARs, ARm, ARl
    # with CocoMetric's proposal numbers (100, 300, 1000) as maxDets: AR@1 is AR@100 here.
    stats_index = {
        "mAP": 0,
        "mAP_50": 1,
        "mAP_75": 2,
        "mAP_s": 3,
        "mAP_m": 4,
        "mAP_l": 5,
        "AR@100": 6,
        "AR@300": 7,
        "AR@1000": 8,
        "AR_s@1000": 9,
        "AR_m@1000": 10,
        "AR_l@1000": 11,
    }
    out = {
        "script": "scripts/make_coco_metric_reference.py",
        "made_with": {
            "mmdet": mmdet.__version__,
            "torch": torch.__version__,
            "evaluator": "mmdet.evaluation.CocoMetric(metric='bbox', classwise=True)",
        },
        "detections": "../shared/fixtures/ssd300_coco/reference.npz det_bboxes_i, det_scores_i, "
        "det_labels_i (image i has id i + 1)",
        "ann_file": "tests/data/coco_metric/instances.json",
        "reported": {
            n: reported[f"coco/bbox_{m}"] for n, m in zip(names, METRIC_ITEMS, strict=True)
        },
        "unrounded": {n: stats[stats_index[m]] for n, m in zip(names, METRIC_ITEMS, strict=True)},
        "per_class_ap_reported": {
            c: reported[f"coco/{c}_precision"] for c in classes if f"coco/{c}_precision" in reported
        },
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["reported"], indent=1))


if __name__ == "__main__":
    main()
