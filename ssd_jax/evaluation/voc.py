"""Pascal VOC mAP as mmdetection's ``eval_map`` with ``tpfp_default`` (its ``VOCMetric``).

Per class and image, detections in descending score are matched to the ground truth of highest
IoU; IoU ≥ ``iou_thr`` with an unclaimed gt is a TP, with an already claimed gt a FP (the
detection does not fall back to another gt, as in the VOC devkit), with a difficult gt neither.
Detections of all images are then ranked by score into a precision/recall curve; difficult gts
do not count in recall. mAP averages the classes that have ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EPS = np.finfo(np.float32).eps  # mmdetection's eval_map guard against 0 / 0


def box_iou_voc(
    boxes1: np.ndarray, boxes2: np.ndarray, use_legacy_coordinate: bool = True
) -> np.ndarray:
    """IoU of xyxy boxes (N, 4) × (M, 4) → (N, M) float32 (mmdetection's ``bbox_overlaps``).

    With ``use_legacy_coordinate`` the coordinates are inclusive pixel indices: a box spans
    ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels (VOC devkit, mmdetection's VOCMetric).
    """
    extra = 1.0 if use_legacy_coordinate else 0.0
    b1 = np.asarray(boxes1, np.float32).reshape(-1, 1, 4)
    b2 = np.asarray(boxes2, np.float32).reshape(1, -1, 4)
    area1 = (b1[..., 2] - b1[..., 0] + extra) * (b1[..., 3] - b1[..., 1] + extra)
    area2 = (b2[..., 2] - b2[..., 0] + extra) * (b2[..., 3] - b2[..., 1] + extra)
    w = np.maximum(
        np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]) + extra, 0
    )
    h = np.maximum(
        np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]) + extra, 0
    )
    inter = w * h
    return inter / np.maximum(area1 + area2 - inter, np.float32(1e-6))


def tpfp_image(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    iou_thr: float = 0.5,
    use_legacy_coordinate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags (K,) float32 of one image's detections of one class (``tpfp_default``).

    Args:
        det_boxes: (K, 4) xyxy; det_scores: (K,).
        gt_boxes: (n, 4) xyxy; gt_difficult: (n,) bool, difficult gts are ignored.
    """
    tp = np.zeros(len(det_boxes), np.float32)
    fp = np.zeros(len(det_boxes), np.float32)
    if len(gt_boxes) == 0:
        fp[:] = 1
        return tp, fp
    # mmdetection stacks the ignored gts after the others: argmax ties go to a non-difficult gt.
    order = np.argsort(gt_difficult, kind="stable")
    gt_boxes, gt_difficult = gt_boxes[order], gt_difficult[order]
    ious = box_iou_voc(det_boxes, gt_boxes, use_legacy_coordinate)
    best_iou, best_gt = ious.max(axis=1), ious.argmax(axis=1)
    covered = np.zeros(len(gt_boxes), bool)
    for i in np.argsort(-np.asarray(det_scores, np.float32)):  # mmdetection's (default) sort
        if best_iou[i] < iou_thr:
            fp[i] = 1
        elif not gt_difficult[best_gt[i]]:
            if covered[best_gt[i]]:
                fp[i] = 1
            else:
                covered[best_gt[i]] = True
                tp[i] = 1
    return tp, fp


def average_precision(recalls: np.ndarray, precisions: np.ndarray, mode: str = "area") -> float:
    """AP of a precision/recall curve (points in descending score order).

    ``'area'``: area under the monotone precision envelope (VOC2010+, all points);
    ``'11points'``: mean of the best precision at recall ≥ 0, 0.1, …, 1 (VOC2007).
    """
    if mode == "area":
        mrec = np.concatenate([[0.0], recalls, [1.0]])
        mpre = np.concatenate([[0.0], precisions, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.where(mrec[1:] != mrec[:-1])[0]
        return float(np.float32(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))
    if mode == "11points":
        ap = np.float32(0)
        for thr in np.arange(0, 1 + 1e-3, 0.1):  # mmdetection's thresholds, float rounding too
            precs = precisions[recalls >= thr]
            ap += precs.max() if precs.size else 0
        return float(ap / np.float32(11))
    raise ValueError(f"mode must be 'area' or '11points', got {mode!r}")


def voc_map(
    detections: Sequence[Mapping[str, np.ndarray]],
    annotations: Sequence[Mapping[str, np.ndarray]],
    num_classes: int,
    iou_thr: float = 0.5,
    mode: str = "area",
    use_legacy_coordinate: bool = True,
) -> dict:
    """VOC mAP of per-image detections against per-image annotations.

    Args:
        detections: per image ``{'boxes' (K, 4) xyxy pixels, 'scores' (K,), 'labels' (K,) int}``.
        annotations: per image ``{'boxes' (n, 4) xyxy pixels, 'labels' (n,) int,
            'difficult' (n,) bool (optional, default all False)}``.
        num_classes: labels are 0..num_classes-1.
        iou_thr: IoU for a match.
        mode: ``'area'`` (VOC2010+) or ``'11points'`` (VOC2007, mmdetection's VOCMetric default).
        use_legacy_coordinate: +1 pixel widths/heights, as mmdetection's VOCMetric always uses.

    Returns:
        ``{'mAP': float, 'per_class_AP' (C,) (nan for a class without ground truth),
        'per_class_recall' (C,) recall at the last detection (0 without detections),
        'num_gts' (C,) non-difficult gts, 'num_dets' (C,)}``. ``mAP`` is the mean over classes
        with ground truth, 0.0 if there are none.
    """
    if len(detections) != len(annotations):
        raise ValueError(f"{len(detections)} detection sets for {len(annotations)} annotations")
    aps = np.full(num_classes, np.nan)
    recalls = np.zeros(num_classes)
    num_gts = np.zeros(num_classes, np.int64)
    num_dets = np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        scores, tp, fp, num_gts[c] = _class_tpfp(
            detections, annotations, c, iou_thr, use_legacy_coordinate
        )
        num_dets[c] = len(scores)
        order = np.argsort(-scores)  # mmdetection's (default, unstable) sort: same tie order
        tp, fp = np.cumsum(tp[order]), np.cumsum(fp[order])
        recall = tp / np.maximum(np.float64(num_gts[c]), _EPS)
        precision = tp / np.maximum(tp + fp, _EPS)
        recalls[c] = recall[-1] if len(recall) else 0.0
        if num_gts[c] > 0:
            aps[c] = average_precision(recall, precision, mode)
    with_gt = num_gts > 0
    mean_ap = float(np.mean(aps[with_gt].astype(np.float32))) if with_gt.any() else 0.0
    return {
        "mAP": mean_ap,
        "per_class_AP": aps,
        "per_class_recall": recalls,
        "num_gts": num_gts,
        "num_dets": num_dets,
    }


def _class_tpfp(
    detections: Sequence[Mapping[str, np.ndarray]],
    annotations: Sequence[Mapping[str, np.ndarray]],
    label: int,
    iou_thr: float,
    use_legacy_coordinate: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One class over all images: scores (D,) float32, TP (D,), FP (D,), non-difficult gts."""
    empty = np.zeros(0, np.float32)
    scores, tps, fps, num_gts = [empty], [empty], [empty], 0
    for det, ann in zip(detections, annotations):
        d = np.asarray(det["labels"]) == label
        g = np.asarray(ann["labels"]) == label
        det_boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)[d]
        det_scores = np.asarray(det["scores"], np.float32)[d]
        gt_boxes = np.asarray(ann["boxes"], np.float32).reshape(-1, 4)[g]
        difficult = np.asarray(ann.get("difficult", np.zeros(len(g), bool)), bool)[g]
        tp, fp = tpfp_image(
            det_boxes, det_scores, gt_boxes, difficult, iou_thr, use_legacy_coordinate
        )
        scores.append(det_scores)
        tps.append(tp)
        fps.append(fp)
        num_gts += int((~difficult).sum())
    return np.concatenate(scores), np.concatenate(tps), np.concatenate(fps), num_gts


def voc_annotations(source: Any) -> list[dict[str, Any]]:
    """Per record index ``{'image_id', 'boxes' (n, 4) xyxy pixels, 'labels' (n,), 'difficult'
    (n,) bool (all False when the source has no such field)}``. Reads every record (image
    sources such as TFDS decode their images)."""
    annotations = []
    for i in range(len(source)):
        r = source[i]
        labels = np.asarray(r["labels"], np.int64)
        difficult = r.get("difficult", np.zeros(len(labels), bool))
        annotations.append(
            {
                "image_id": r["image_id"],
                "boxes": np.asarray(r["boxes"], np.float32).reshape(-1, 4),
                "labels": labels,
                "difficult": np.asarray(difficult, bool),
            }
        )
    return annotations


def voc_results(detections: Sequence[dict[str, Any]]) -> list[dict]:
    """VOC detections as COCO-style result dicts; ``category_id`` is label + 1 (VOC has no ids)
    and ``image_id`` the VOC image name."""
    return [
        {
            "image_id": det["image_id"],
            "category_id": int(label) + 1,
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(score),
        }
        for det in detections
        for (x1, y1, x2, y2), score, label in zip(
            np.asarray(det["boxes"]).reshape(-1, 4), det["scores"], det["labels"]
        )
    ]


def format_voc_table(metrics: dict[str, Any]) -> str:
    """mmdetection-style VOC table: class, gts, dets, recall, AP; then mAP."""
    names = list(metrics["per_class_AP"])
    width = max([len("class")] + [len(n) for n in names])
    header = f"{'class':<{width}} {'gts':>6} {'dets':>7} {'recall':>7} {'ap':>7}"
    lines = [header, "-" * len(header)]
    for name in names:
        lines.append(
            f"{name:<{width}} {metrics['num_gts'][name]:>6d} "
            f"{metrics['num_dets'][name]:>7d} {metrics['per_class_recall'][name]:>7.3f} "
            f"{metrics['per_class_AP'][name]:>7.3f}"
        )
    lines += [
        "-" * len(header),
        f"{'mAP':<{width}} {'':>6} {'':>7} {'':>7} {metrics['mAP']:>7.3f}   "
        f"(IoU {metrics['iou_thr']}, {metrics['mode']})",
    ]
    return "\n".join(lines)
