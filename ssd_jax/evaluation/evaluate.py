"""Evaluation of a detector on a source: COCO or VOC metrics (mmdetection's CocoMetric /
VOCMetric), the metrics table and the output files. Behind ``eval.py`` and training's validation.

    det = load_detector_for_data(config, "ssd300_coco.pth", source.class_names)
    p_detect = make_p_detect(det.config, det.model, det.anchors())
    metrics, results = evaluate_coco(p_detect, det.variables, source, det.config, batch_size=8)
    metrics, dets = evaluate_voc(p_detect, det.variables, voc_source, det.config, batch_size=8)

or all of it, with the output files: ``evaluate_checkpoint(config, checkpoint, source, out_dir)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ssd_jax.detector import Detector
from ssd_jax.errors import ConfigError
from ssd_jax.evaluation.coco import (
    coco_evaluate,
    coco_ground_truth,
    detections_to_coco_results,
    format_metrics_table,
    write_results_json,
)
from ssd_jax.evaluation.inference import effective_batch_size, make_p_detect, run_inference
from ssd_jax.evaluation.voc import format_voc_table, voc_annotations, voc_map, voc_results
from ssd_jax.jsonio import json_safe
from ssd_jax.models.assembly import zero_variables
from ssd_jax.outputs import check_outputs
from ssd_jax.porting import load_checkpoint_variables

log = logging.getLogger(__name__)

# mmdetection's CocoMetric evaluates with proposal_nums (100, 300, 1000).
MMDET_MAX_DETS = (100, 300, 1000)
# mmdetection's VOCMetric: iou_thrs=0.5; eval_mode 'area' unless the config says '11points'.
VOC_IOU_THR = 0.5
DEFAULT_VOC_MODE = "area"


def evaluate_coco(
    p_detect,
    variables: dict,
    source: Any,
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict]]:
    """COCO box metrics (mmdetection's CocoMetric settings) and the COCO results list.

    Metrics: the 12 ``COCOeval.stats`` (``bbox_mAP`` ... ``AR_l@1000``) and ``per_class_AP``
    {class name: AP} (see ``coco_evaluate``). Results: ``[{'image_id', 'category_id', 'bbox'
    [x, y, w, h] original pixels, 'score'}]``. Every process returns the same.
    """
    indices, dets = run_inference(
        p_detect,
        variables,
        source,
        config,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    gt, cat_ids, image_ids = coco_ground_truth(
        source, indices, progress and jax.process_index() == 0
    )
    results = detections_to_coco_results(image_ids, dets, cat_ids)
    metrics = coco_evaluate(
        gt, results, class_names=list(source.class_names), max_dets=MMDET_MAX_DETS
    )
    return metrics, results


def eval_setting(config: ml_collections.ConfigDict, key: str, default: Any) -> Any:
    """``config.evaluation.<key>`` when the config has it, else ``default``."""
    evaluation = config.get("evaluation", None) or {}
    return evaluation.get(key, default)


def evaluate_voc(
    p_detect,
    variables: dict,
    source: Any,
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    mode: str | None = None,
    iou_thr: float = VOC_IOU_THR,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pascal VOC mAP (mmdetection's VOCMetric: ``eval_map``, legacy +1 pixel coordinates).

    ``mode``: ``'area'`` or ``'11points'``; default ``config.evaluation.voc_mode`` or 'area'.
    Unreadable images count as images without detections.

    Returns metrics ``{'mAP', 'AP50' (the same, mmdetection's name at IoU 0.5), 'iou_thr',
    'mode', 'per_class_AP', 'per_class_recall', 'num_gts', 'num_dets'}`` (per-class entries are
    {class name: value}; AP is nan for a class without ground truth) and per image
    ``{'image_id' (the source's), 'boxes' (K, 4) xyxy original pixels, 'scores', 'labels'}``.
    """
    mode = mode or eval_setting(config, "voc_mode", DEFAULT_VOC_MODE)
    indices, dets = run_inference(
        p_detect,
        variables,
        source,
        config,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
    }
    by_index = dict(zip(indices, dets))
    per_image = [by_index.get(i, empty) for i in range(len(source))]
    annotations = voc_annotations(source)
    result = voc_map(per_image, annotations, len(source.class_names), iou_thr=iou_thr, mode=mode)
    names = list(source.class_names)
    metrics = {"mAP": result["mAP"], "AP50": result["mAP"], "iou_thr": iou_thr, "mode": mode}
    for key, cast in (
        ("per_class_AP", float),
        ("per_class_recall", float),
        ("num_gts", int),
        ("num_dets", int),
    ):
        metrics[key] = {name: cast(v) for name, v in zip(names, result[key])}
    detections = [{"image_id": annotations[i]["image_id"], **per_image[i]} for i in indices]
    return metrics, detections


def load_detector_for_data(
    config: ml_collections.ConfigDict, checkpoint: str | os.PathLike, class_names: Sequence[str]
) -> Detector:
    """A ``Detector`` of ``config`` for the data's classes, weights from ``checkpoint`` (an
    mmdetection ``.pth`` or an orbax directory).

    ``config`` is changed in place: ``class_names`` and ``model.num_classes`` become the data's.
    A checkpoint trained for another number of classes (or another config) is refused with
    CheckpointMismatchError saying what it fits.
    """
    class_names = tuple(class_names)
    if len(class_names) == len(config.class_names) and class_names != tuple(config.class_names):
        log.warning(
            "the data's class names differ from the config's; using the data's: %s",
            ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else ""),
        )
    config.class_names = class_names
    config.model.num_classes = len(class_names)
    variables = load_checkpoint_variables(checkpoint, zero_variables(config), config=config)
    return Detector(config, variables)


def exported_detect(
    config: ml_collections.ConfigDict,
    path: str | os.PathLike,
    class_names: Sequence[str],
    backend: str,
) -> tuple[Any, dict]:
    """(a ``make_p_detect`` stand-in running the exported model at ``path`` in ``backend``,
    no variables); refuses a model of another class count or input size than the data and
    config."""
    from ssd_jax.export import runtime

    model = runtime.load(path, backend)
    if model.kind != "detect":
        raise ConfigError(
            f"{path}: a {model.kind or 'unknown'} export; evaluation needs a "
            "detection export (ssd-jax-export without --raw)"
        )
    if len(model.class_names) != len(class_names):
        raise ConfigError(
            f"{path} detects {len(model.class_names)} classes but the data has {len(class_names)}"
        )
    if model.input_size != config.input_size:
        raise ConfigError(
            f"{path} takes {model.input_size} px images, the config {config.input_size}"
        )
    config.class_names = tuple(class_names)
    config.model.num_classes = len(class_names)
    return runtime.sharded_detect(model), {}


def metric_for(config: ml_collections.ConfigDict, source: Any, metric: str = "") -> str:
    """'coco' or 'voc': ``metric`` if given, else ``config.evaluation.metric``, else 'voc' for
    a ``VocSource`` and 'coco' otherwise."""
    from ssd_jax.data.voc import VocSource

    metric = (
        metric
        or eval_setting(config, "metric", "")
        or ("voc" if isinstance(source, VocSource) else "coco")
    )
    if metric not in ("coco", "voc"):
        raise ConfigError(f"unknown evaluation metric {metric!r} (coco or voc)")
    return metric


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    checkpoint: str | os.PathLike,
    source: Any,
    out_dir: str | os.PathLike | None = None,
    *,
    metric: str = "",
    voc_mode: str = "",
    batch_size: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    backend: str = "jax",
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``source``: print the metrics table and (process 0) write
    ``out_dir/metrics.json`` and ``out_dir/results.bbox.json``. Returns the metrics.
    Existing output files are refused before anything runs unless ``overwrite``.

    ``backend`` 'jax' runs the config's network with ``checkpoint``'s weights (a .pth or an
    orbax directory); 'onnxruntime' / 'openvino' run ``checkpoint`` as an exported ``.onnx``
    detection model (``ssd-jax-export``), the very file that is deployed.

    ``batch_size`` per process (0: ``config.test.batch_size``), rounded down to a multiple of
    the local device count. ``metric`` as :func:`metric_for`; ``voc_mode`` as
    :func:`evaluate_voc`'s ``mode``. ``config`` is changed in place (the data's classes, see
    :func:`load_detector_for_data`).
    """
    metric = metric_for(config, source, metric)
    if out_dir is not None:
        check_outputs(
            out_dir,
            OUTPUT_FILES,
            overwrite=overwrite,
            inputs=[checkpoint]
            + [getattr(source, a) for a in ("ann_file", "img_dir") if hasattr(source, a)],
        )
    if backend == "jax":
        det = load_detector_for_data(config, checkpoint, source.class_names)
        p_detect, variables = make_p_detect(det.config, det.model, det.anchors()), det.variables
    else:
        p_detect, variables = exported_detect(config, checkpoint, source.class_names, backend)
    devices = jax.local_device_count()
    batch_size = max(devices, (batch_size or config.test.batch_size) // devices * devices)
    batch_size = effective_batch_size(batch_size, len(source))
    log.info(
        "evaluating %s on %r (%s metric, %d images per batch per process)",
        os.fspath(checkpoint),
        source,
        metric,
        batch_size,
    )
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    if metric == "voc":
        metrics, dets = evaluate_voc(
            p_detect, variables, source, config, mode=voc_mode or None, **kwargs
        )
        table, results = format_voc_table(metrics), voc_results(dets)
    else:
        metrics, results = evaluate_coco(p_detect, variables, source, config, **kwargs)
        table = format_metrics_table(metrics)
    if jax.process_index() == 0:
        print(table, flush=True)
        if out_dir is not None:
            write_outputs(out_dir, metrics, results)
    return metrics


OUTPUT_FILES = ("metrics.json", "results.bbox.json")


def write_outputs(
    out_dir: str | os.PathLike, metrics: dict[str, Any], results: Sequence[dict]
) -> None:
    """``metrics.json`` (strict JSON: nan → null) and ``results.bbox.json`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, OUTPUT_FILES[0]), "w") as f:
        json.dump(json_safe(metrics), f, indent=1, allow_nan=False)
    write_results_json(os.path.join(out_dir, OUTPUT_FILES[1]), results)
    log.info("wrote %s/metrics.json and results.bbox.json (%d detections)", out_dir, len(results))
