"""COCO bbox evaluation as mmdetection's ``CocoMetric`` (pycocotools ``COCOeval``).

    results = detections_to_coco_results(image_ids, det.predict(images), coco.getCatIds())
    metrics = coco_evaluate(coco, results)   # {'bbox_mAP': ..., 'per_class_AP': {...}}
    print(format_metrics_table(metrics))

Label ``i`` of a detector is the ``i``-th category of the ground truth's ``categories`` list
(mmdetection's ``cat_ids``), whatever its id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_jax.progress import track

log = logging.getLogger(__name__)

# COCO's standard maxDets. mmdetection's CocoMetric uses proposal_nums (100, 300, 1000) instead,
# which makes stats[1:6] and its per-class AP use the top 1000 (not 100) detections per image.
COCO_MAX_DETS = (1, 10, 100)


def metric_names(max_dets: Sequence[int] = COCO_MAX_DETS) -> tuple[str, ...]:
    """Names of ``COCOeval.stats`` in order (mmdetection's ``bbox_*`` names for the six APs)."""
    m1, m2, m3 = max_dets
    return (
        "bbox_mAP",
        "bbox_mAP_50",
        "bbox_mAP_75",
        "bbox_mAP_s",
        "bbox_mAP_m",
        "bbox_mAP_l",
        f"AR@{m1}",
        f"AR@{m2}",
        f"AR@{m3}",
        f"AR_s@{m3}",
        f"AR_m@{m3}",
        f"AR_l@{m3}",
    )


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """[x1, y1, x2, y2] → [x, y, w, h] with ``w = x2 - x1`` (mmdetection's ``xyxy2xywh``)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def detections_to_coco_results(
    image_ids: Sequence[int], detections: Sequence[Mapping[str, np.ndarray]], cat_ids: Sequence[int]
) -> list[dict]:
    """Per-image detections → COCO result dicts (mmdetection's ``CocoMetric.results2json``).

    Args:
        image_ids: the COCO image id of each entry of ``detections``.
        detections: per image ``{'boxes' (K, 4) xyxy original pixels, 'scores' (K,),
            'labels' (K,) int}``.
        cat_ids: the data set's category ids in its category order; label ``i`` → ``cat_ids[i]``.

    Returns:
        ``[{'image_id', 'category_id', 'bbox' [x, y, w, h] pixels, 'score'}, ...]``.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection sets")
    results = []
    for image_id, det in zip(image_ids, detections):
        boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(det["scores"]), np.asarray(det["labels"])):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[int(label)]),
                    "bbox": xyxy_to_xywh(box),
                    "score": float(score),
                }
            )
    return results


def write_results_json(path: str | os.PathLike, results: Sequence[dict]) -> None:
    """Write COCO result dicts to ``path`` (a results file for the COCO server or ``loadRes``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(list(results), f)


def coco_evaluate(
    coco_gt: COCO | str | os.PathLike,
    results: Sequence[dict],
    class_names: Sequence[str] | None = None,
    max_dets: Sequence[int] = COCO_MAX_DETS,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCOeval bbox of ``results`` against ``coco_gt``.

    Args:
        coco_gt: a ground-truth ``COCO`` object or the path of an ``instances_*.json``.
        results: COCO result dicts (see :func:`detections_to_coco_results`); not modified.
        class_names: names for ``per_class_AP``, one per category in the ground truth's category
            order; default the categories' own names.
        max_dets: COCOeval ``params.maxDets``, three values including 100 (pycocotools computes
            stats[0] at 100); mmdetection's CocoMetric uses ``(100, 300, 1000)``.
        verbose: let pycocotools print its progress and summary.

    Returns:
        The 12 ``COCOeval.stats`` under :func:`metric_names` (−1 where no ground truth
        qualifies), and ``'per_class_AP'``: {class name: AP@[.5:.95], nan without ground truth}.
        An empty ``results`` evaluates as no detections (AP 0 for every class with ground truth).
    """
    if len(max_dets) != 3 or 100 not in max_dets:
        raise ValueError(f"max_dets must be three values including 100, got {max_dets}")
    with _quiet(verbose):
        gt = coco_gt if isinstance(coco_gt, COCO) else COCO(os.fspath(coco_gt))
        dt = gt.loadRes([dict(r) for r in results]) if results else _empty_results(gt)
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    metrics: dict[str, Any] = {
        name: float(v) for name, v in zip(metric_names(max_dets), coco_eval.stats)
    }
    metrics["per_class_AP"] = _per_class_ap(gt, coco_eval, class_names)
    return metrics


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _empty_results(gt: COCO) -> COCO:
    """A results ``COCO`` with no detections (``COCO.loadRes([])`` raises IndexError)."""
    dt = COCO()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    dt.createIndex()
    return dt


def _per_class_ap(
    gt: COCO, coco_eval: COCOeval, class_names: Sequence[str] | None
) -> dict[str, float]:
    """mmdetection's classwise AP: mean of ``precision[:, :, k, area=all, maxDets=-1]`` > −1."""
    cat_ids = gt.getCatIds()  # the data set's category order (label order)
    if class_names is None:
        class_names = [cat["name"] for cat in gt.loadCats(cat_ids)]
    if len(class_names) != len(cat_ids):
        raise ValueError(f"{len(class_names)} class names for {len(cat_ids)} categories")
    precision = coco_eval.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
    column = {cat_id: k for k, cat_id in enumerate(coco_eval.params.catIds)}  # sorted ids
    per_class = {}
    for name, cat_id in zip(class_names, cat_ids):
        p = precision[:, :, column[cat_id], 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else math.nan
    return per_class


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """The 12 COCO numbers, one per line, then the per-class AP table (3 classes a row)."""
    lines = [
        f"{name:<12} {value:7.4f}" for name, value in metrics.items() if name != "per_class_AP"
    ]
    per_class = list(metrics.get("per_class_AP", {}).items())
    if per_class:
        width = max(len(name) for name, _ in per_class)
        cells = [f"{name:<{width}} {ap:6.3f}" for name, ap in per_class]
        header = "   ".join([f"{'category':<{width}} {'AP':>6}"] * min(3, len(cells)))
        lines += ["", header, "-" * len(header)]
        lines += ["   ".join(cells[i : i + 3]) for i in range(0, len(cells), 3)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Ground truth of sources without a COCO JSON file

_GT_CACHE: weakref.WeakKeyDictionary[Any, tuple[COCO, list[Any]]] = weakref.WeakKeyDictionary()


def records_to_coco(source: Any, progress: bool = False) -> tuple[COCO, list[Any]]:
    """A COCO ground truth built from the records of ``source`` (sources without a JSON file).

    Category ids are label + 1 named ``source.class_names``; image ids are the records'
    ``image_id`` when they are unique ints, else the record index. A record's ``difficult``
    boxes (VOC) become ``iscrowd`` 1, the only way pycocotools ignores a ground-truth box.
    Records of image sources (TFDS) decode their images: this reads the split once more.
    Returns the COCO object and the image id of every record index.
    """
    records = []  # without the decoded images that image sources' records carry
    for i in track(
        range(len(source)), total=len(source), desc="ground truth", unit="img", disable=not progress
    ):
        r = source[i]
        records.append(
            {k: r[k] for k in ("image_id", "height", "width", "boxes", "labels")}
            | {"difficult": r.get("difficult", np.zeros(len(r["labels"]), bool))}
        )
    ids = [r["image_id"] for r in records]
    if not all(isinstance(i, (int, np.integer)) for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(len(records)))
    images, annotations = [], []
    for image_id, record in zip(ids, records):
        images.append(
            {"id": int(image_id), "height": int(record["height"]), "width": int(record["width"])}
        )
        for box, label, hard in zip(
            np.asarray(record["boxes"], np.float64).reshape(-1, 4),
            record["labels"],
            record["difficult"],
        ):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "area": w * h,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "iscrowd": int(bool(hard)),
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(source.class_names)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, [int(i) for i in ids]


def coco_ground_truth(
    source: Any, indices: Sequence[int], progress: bool = False
) -> tuple[COCO | str, list[int], list[int]]:
    """(ground truth: annotation file path or COCO, category id per label, image id per index).

    ``CocoSource`` (``ann_file`` and ``cat_ids``) evaluates against its JSON file as mmdetection
    does (crowd boxes included); other sources through :func:`records_to_coco` (cached per
    source object).
    """
    if hasattr(source, "ann_file") and hasattr(source, "cat_ids"):
        return source.ann_file, list(source.cat_ids), [int(source[i]["image_id"]) for i in indices]
    try:
        gt, ids = _GT_CACHE[source]
    except (KeyError, TypeError):
        log.info("building a COCO ground truth from the records of %r", source)
        gt, ids = records_to_coco(source, progress)
        with contextlib.suppress(TypeError):
            _GT_CACHE[source] = (gt, ids)
    return gt, list(range(1, len(source.class_names) + 1)), [ids[i] for i in indices]
