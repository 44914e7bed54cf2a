"""Batched, jitted inference over an evaluation split, sharded over devices and hosts, then COCO
or VOC metrics. Shared by ``eval.py`` and training's validation.

    det = load_detector_for_data(config, "ssd300_coco.pth", source.class_names)
    p_detect = make_p_detect(det.model, det.config, det.anchors())
    metrics, results = evaluate_coco(p_detect, det.variables, source, det.config, batch_size=8)
    metrics, dets = evaluate_voc(p_detect, det.variables, voc_source, det.config, batch_size=8)

or all of it, with the output files: ``evaluate_checkpoint(config, checkpoint, source, out_dir)``.

Inside the loader every record is identified by its index in the source (VOC image ids are
strings, and record indices also make multi-host gathering exact); the indices are mapped back
to the source's image ids for the results.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import weakref
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from pycocotools.coco import COCO
from tqdm import tqdm

from ssd_jax import postprocess as post
from ssd_jax.data.pipeline import make_eval_loader
from ssd_jax.evaluation.coco import (coco_evaluate, detections_to_coco_results,
                                     format_metrics_table, write_results_json)
from ssd_jax.evaluation.voc import voc_map
from ssd_jax.models import SSD
from ssd_jax.training.report import json_safe
from ssd_jax.training.step import AXIS, normalize_on_device, replicate, shard_batch

log = logging.getLogger(__name__)

# mmdetection's CocoMetric evaluates with proposal_nums (100, 300, 1000).
MMDET_MAX_DETS = (100, 300, 1000)
# mmdetection's VOCMetric: iou_thrs=0.5; eval_mode 'area' unless the config says '11points'.
VOC_IOU_THR = 0.5
DEFAULT_VOC_MODE = "area"

Detections = dict[str, np.ndarray]  # {'boxes' (K, 4) xyxy original px, 'scores' (K,), 'labels'}


# ---------------------------------------------------------------------------------------------
# Inference

def make_p_detect(model: SSD, config: ml_collections.ConfigDict, anchors: list[np.ndarray]):
    """pmapped (replicated variables, uint8 images [D, B, S, S, 3], scale factors [D, B, 2]) →
    Detections with a leading device axis (boxes [D, B, M, 4] in original-image pixels)."""
    t = config.test
    anchors = [jnp.asarray(a) for a in anchors]

    def detect(variables, images, scale_factors):
        x = normalize_on_device(images, config.model.mean, config.model.std)
        cls_logits, box_deltas = model.apply(variables, x, train=False)
        return post.postprocess(
            cls_logits, box_deltas, anchors, scale_factors, input_size=config.input_size,
            score_thr=t.score_thr, nms_pre=t.nms_pre, nms_iou=t.nms_iou, max_per_img=t.max_per_img,
            min_bbox_size=t.min_bbox_size, means=tuple(config.model.box_coder.means),
            stds=tuple(config.model.box_coder.stds))

    return jax.pmap(detect, axis_name=AXIS)


class _IndexIds:
    """``source`` with each record's ``image_id`` replaced by the record's index (an int)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self._source[index], "image_id": int(index)}

    def __repr__(self) -> str:
        return f"_IndexIds({self._source!r})"


def effective_batch_size(batch_size: int, num_images: int) -> int:
    """``batch_size`` (per process) capped to what this process's share of ``num_images``
    needs, rounded up to a multiple of the local device count (no compile for unused rows)."""
    devices = jax.local_device_count()
    if batch_size < 1 or batch_size % devices:
        raise ValueError(f"batch_size {batch_size} is not a positive multiple of the {devices} "
                         "local devices")
    per_process = math.ceil(num_images / jax.process_count())
    return min(batch_size, max(devices, devices * math.ceil(per_process / devices)))


def run_inference(p_detect, variables: dict, source: Any, config: ml_collections.ConfigDict, *,
                  batch_size: int, num_workers: int = 0, progress: bool = True
                  ) -> tuple[list[int], list[Detections]]:
    """Detections for every readable image of ``source``, all hosts' shards gathered.

    Returns the record indices (ascending; unreadable images are left out, see
    ``make_eval_loader``) and per index ``{'boxes' (K, 4) xyxy original pixels, 'scores' (K,),
    'labels' (K,)}``. ``batch_size`` is per process and must be divisible by the local device
    count; it is lowered when the source needs fewer rows.
    """
    if len(source) == 0:
        raise ValueError(f"{source!r} has no images to evaluate")
    devices = jax.local_device_count()
    batch_size = effective_batch_size(batch_size, len(source))
    loader = make_eval_loader(_IndexIds(source), config, batch_size=batch_size,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              num_workers=num_workers)
    replicated = replicate(variables)
    bar = tqdm(total=len(loader) * batch_size * jax.process_count(), desc="eval", unit="img",
               dynamic_ncols=True, disable=not progress or jax.process_index() != 0)
    chunks, pending = [], None
    for batch in loader:
        sharded = shard_batch({"image": batch["image"], "scale_factor": batch["scale_factor"]},
                              devices)
        dets = p_detect(replicated, sharded["image"], sharded["scale_factor"])  # async dispatch
        if pending is not None:  # fetch the previous batch while this one runs
            chunks.append(_to_host(*pending))
            bar.update(batch_size * jax.process_count())
        pending = (dets, batch)
    chunks.append(_to_host(*pending))
    bar.update(batch_size * jax.process_count())
    bar.close()
    local = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if jax.process_count() > 1:
        local = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in
                 multihost_utils.process_allgather(local).items()}
    return _unpad(local)


def _to_host(dets: post.Detections, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch's detections [D, B/D, ...] → host arrays [B, ...] with its ids and validity."""
    host = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in dets._asdict().items()}
    return host | {"image_id": batch["image_id"], "valid_image": batch["valid_image"]}


def _unpad(gathered: dict[str, np.ndarray]) -> tuple[list[int], list[Detections]]:
    """Gathered fixed-shape rows → (record indices, per-image variable-length detections)."""
    indices, results = [], []
    for i in np.flatnonzero(gathered["valid_image"]):
        k = int(gathered["num_valid"][i])
        indices.append(int(gathered["image_id"][i]))
        results.append({"boxes": gathered["boxes"][i, :k], "scores": gathered["scores"][i, :k],
                        "labels": gathered["labels"][i, :k]})
    order = np.argsort(indices, kind="stable")
    return [indices[j] for j in order], [results[j] for j in order]


# ---------------------------------------------------------------------------------------------
# COCO

_GT_CACHE: "weakref.WeakKeyDictionary[Any, tuple[COCO, list[Any]]]" = weakref.WeakKeyDictionary()


def records_to_coco(source: Any, progress: bool = False) -> tuple[COCO, list[Any]]:
    """A COCO ground truth built from the records of ``source`` (sources without a JSON file).

    Category ids are label + 1 named ``source.class_names``; image ids are the records'
    ``image_id`` when they are unique ints, else the record index. A record's ``difficult``
    boxes (VOC) become ``iscrowd`` 1, the only way pycocotools ignores a ground-truth box.
    Records of image sources (TFDS) decode their images: this reads the split once more.
    Returns the COCO object and the image id of every record index.
    """
    records = []  # without the decoded images that image sources' records carry
    for i in tqdm(range(len(source)), desc="ground truth", unit="img", disable=not progress):
        r = source[i]
        records.append({k: r[k] for k in ("image_id", "height", "width", "boxes", "labels")}
                       | {"difficult": r.get("difficult", np.zeros(len(r["labels"]), bool))})
    ids = [r["image_id"] for r in records]
    if not all(isinstance(i, (int, np.integer)) for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(len(records)))
    images, annotations = [], []
    for image_id, record in zip(ids, records):
        images.append({"id": int(image_id), "height": int(record["height"]),
                       "width": int(record["width"])})
        for box, label, hard in zip(np.asarray(record["boxes"], np.float64).reshape(-1, 4),
                                    record["labels"], record["difficult"]):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id),
                                "category_id": int(label) + 1, "area": w * h,
                                "bbox": [float(box[0]), float(box[1]), w, h],
                                "iscrowd": int(bool(hard))})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(source.class_names)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, [int(i) for i in ids]


def coco_ground_truth(source: Any, indices: Sequence[int], progress: bool = False
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


def evaluate_coco(p_detect, variables: dict, source: Any, config: ml_collections.ConfigDict, *,
                  batch_size: int, num_workers: int = 0, progress: bool = True
                  ) -> tuple[dict[str, Any], list[dict]]:
    """COCO box metrics (mmdetection's CocoMetric settings) and the COCO results list.

    Metrics: the 12 ``COCOeval.stats`` (``bbox_mAP`` ... ``AR_l@1000``) and ``per_class_AP``
    {class name: AP} (see ``coco_evaluate``). Results: ``[{'image_id', 'category_id', 'bbox'
    [x, y, w, h] original pixels, 'score'}]``. Every process returns the same.
    """
    indices, dets = run_inference(p_detect, variables, source, config, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress)
    gt, cat_ids, image_ids = coco_ground_truth(source, indices,
                                               progress and jax.process_index() == 0)
    results = detections_to_coco_results(image_ids, dets, cat_ids)
    metrics = coco_evaluate(gt, results, class_names=list(source.class_names),
                            max_dets=MMDET_MAX_DETS)
    return metrics, results


# ---------------------------------------------------------------------------------------------
# VOC

def eval_setting(config: ml_collections.ConfigDict, key: str, default: Any) -> Any:
    """``config.evaluation.<key>`` when the config has it, else ``default``."""
    evaluation = config.get("evaluation", None) or {}
    return evaluation.get(key, default)


def voc_annotations(source: Any) -> list[dict[str, Any]]:
    """Per record index ``{'image_id', 'boxes' (n, 4) xyxy pixels, 'labels' (n,), 'difficult'
    (n,) bool (all False when the source has no such field)}``. Reads every record (image
    sources such as TFDS decode their images)."""
    annotations = []
    for i in range(len(source)):
        r = source[i]
        labels = np.asarray(r["labels"], np.int64)
        difficult = r.get("difficult", np.zeros(len(labels), bool))
        annotations.append({"image_id": r["image_id"],
                            "boxes": np.asarray(r["boxes"], np.float32).reshape(-1, 4),
                            "labels": labels, "difficult": np.asarray(difficult, bool)})
    return annotations


def evaluate_voc(p_detect, variables: dict, source: Any, config: ml_collections.ConfigDict, *,
                 batch_size: int, num_workers: int = 0, progress: bool = True,
                 mode: Optional[str] = None, iou_thr: float = VOC_IOU_THR
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
    indices, dets = run_inference(p_detect, variables, source, config, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64)}
    by_index = dict(zip(indices, dets))
    per_image = [by_index.get(i, empty) for i in range(len(source))]
    annotations = voc_annotations(source)
    result = voc_map(per_image, annotations, len(source.class_names), iou_thr=iou_thr, mode=mode)
    names = list(source.class_names)
    metrics = {"mAP": result["mAP"], "AP50": result["mAP"], "iou_thr": iou_thr, "mode": mode}
    for key, cast in (("per_class_AP", float), ("per_class_recall", float), ("num_gts", int),
                      ("num_dets", int)):
        metrics[key] = {name: cast(v) for name, v in zip(names, result[key])}
    detections = [{"image_id": annotations[i]["image_id"], **per_image[i]} for i in indices]
    return metrics, detections


def voc_results(detections: Sequence[dict[str, Any]]) -> list[dict]:
    """VOC detections as COCO-style result dicts; ``category_id`` is label + 1 (VOC has no ids)
    and ``image_id`` the VOC image name."""
    return [{"image_id": det["image_id"], "category_id": int(label) + 1,
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
             "score": float(score)}
            for det in detections
            for (x1, y1, x2, y2), score, label in zip(np.asarray(det["boxes"]).reshape(-1, 4),
                                                       det["scores"], det["labels"])]


def format_voc_table(metrics: dict[str, Any]) -> str:
    """mmdetection-style VOC table: class, gts, dets, recall, AP; then mAP."""
    names = list(metrics["per_class_AP"])
    width = max([len("class")] + [len(n) for n in names])
    header = f"{'class':<{width}} {'gts':>6} {'dets':>7} {'recall':>7} {'ap':>7}"
    lines = [header, "-" * len(header)]
    for name in names:
        lines.append(f"{name:<{width}} {metrics['num_gts'][name]:>6d} "
                     f"{metrics['num_dets'][name]:>7d} {metrics['per_class_recall'][name]:>7.3f} "
                     f"{metrics['per_class_AP'][name]:>7.3f}")
    lines += ["-" * len(header),
              f"{'mAP':<{width}} {'':>6} {'':>7} {'':>7} {metrics['mAP']:>7.3f}   "
              f"(IoU {metrics['iou_thr']}, {metrics['mode']})"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sources, checkpoints and the whole evaluation (eval.py)

def build_eval_source(config: ml_collections.ConfigDict, *, data: str = "",
                      ann_file: str = "", img_dir: str = "", tfds_name: str = "",
                      tfds_split: str = "", voc_root: str = "", voc_split: str = "",
                      voc_year: str = "") -> Any:
    """The evaluation source of ``data`` ('coco', 'tfds' or 'voc'; default
    ``config.data.source``, or 'coco' when ``ann_file`` is given).

    Empty arguments fall back to the config's val split: ``data.val_ann_file`` /
    ``val_img_dir``; ``data.tfds_name`` split 'validation'; ``data.voc_root`` (the folder
    holding ``VOCdevkit``), ``data.val_voc_split`` (default 'test'), ``data.voc_year`` ('2007').
    """
    d = config.data
    data = data or ("coco" if ann_file else d.get("source", "coco"))
    if data == "coco":
        from ssd_jax.data.coco import CocoSource
        ann_file = ann_file or d.get("val_ann_file", "")
        img_dir = img_dir or d.get("val_img_dir", "")
        if not ann_file or not img_dir:
            raise ValueError("COCO evaluation needs an annotation file and an image folder "
                             "(config.data.val_ann_file / val_img_dir, or --ann_file / --img_dir)")
        for path in (ann_file, img_dir):
            if not os.path.exists(path):
                raise FileNotFoundError(f"evaluation data not found: {path}")
        return CocoSource(ann_file, img_dir)
    if data == "tfds":
        from ssd_jax.data.tfds_source import TfdsSource
        return TfdsSource(tfds_name or d.get("tfds_name", "coco/2017"),
                          tfds_split or "validation")
    if data == "voc":
        from ssd_jax.data.voc import VocSource
        root = voc_root or d.get("voc_root", "")
        if not root:
            raise ValueError("VOC evaluation needs --voc_root (the folder holding VOCdevkit)")
        return VocSource(root, split=voc_split or d.get("val_voc_split", "test"),
                         year=voc_year or d.get("voc_year", "2007"))
    raise ValueError(f"unknown data source {data!r} (coco, tfds or voc)")


def checkpoint_num_classes(checkpoint: str | os.PathLike, config: ml_collections.ConfigDict
                           ) -> Optional[int]:
    """The class count a checkpoint's head was trained for, None if it cannot be told.

    Read from the last conv of the first level's classification branch
    (``bbox_head.cls_convs.0.<k>.bias``: A₀·(C + 1) channels, A₀ anchors per cell).
    """
    from ssd_jax import checkpoints
    from ssd_jax.detector import anchor_generator
    from ssd_jax.porting import read_state_dict
    from ssd_jax.porting.convert import flat_to_torch_name

    if os.path.isdir(checkpoint):
        flat, _ = checkpoints.load_variables(checkpoint)
        tensors = {flat_to_torch_name(k): v for k, v in flat.items()}
    else:
        tensors, _ = read_state_dict(checkpoint)
    pattern = re.compile(r"^bbox_head\.cls_convs\.0\.(\d+)\.bias$")
    last = sorted((int(m.group(1)), k) for k in tensors if (m := pattern.match(k)))
    if not last:
        return None
    channels = int(np.shape(tensors[last[-1][1]])[0])
    per_cell = anchor_generator(config).num_anchors[0]
    return channels // per_cell - 1 if channels % per_cell == 0 else None


def load_detector_for_data(config: ml_collections.ConfigDict, checkpoint: str | os.PathLike,
                           class_names: Sequence[str]):
    """A ``Detector`` of ``config`` for the data's classes, weights from ``checkpoint`` (an
    mmdetection ``.pth`` or an orbax directory).

    ``config`` is changed in place: ``class_names`` and ``model.num_classes`` become the data's.
    Raises ValueError when the checkpoint was trained for another number of classes.
    """
    from ssd_jax.detector import Detector
    from ssd_jax.porting import CheckpointMismatchError, load_checkpoint_variables

    class_names = tuple(class_names)
    if len(class_names) == len(config.class_names) and class_names != tuple(config.class_names):
        log.warning("the data's class names differ from the config's; using the data's: %s",
                    ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else ""))
    config.class_names = class_names
    config.model.num_classes = len(class_names)
    try:
        variables = load_checkpoint_variables(checkpoint, zero_variables(config))
    except CheckpointMismatchError as e:
        found = checkpoint_num_classes(checkpoint, config)
        if found is not None and found != len(class_names):
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint)} was trained for {found} classes but the "
                f"evaluation data has {len(class_names)} ({', '.join(class_names[:5])}, ...): "
                "evaluate it on data of its own classes") from e
        raise
    return Detector(config, variables)


def zero_variables(config: ml_collections.ConfigDict) -> dict:
    """``{'params', 'batch_stats'}`` of the config's model filled with zeros: the tree a
    checkpoint is strictly loaded into, without running (and compiling) the initialisers."""
    from ssd_jax.detector import anchor_generator
    from ssd_jax.models import build_model

    model = build_model(config.model, anchor_generator(config).num_anchors)
    x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}


def metric_for(config: ml_collections.ConfigDict, source: Any, metric: str = "") -> str:
    """'coco' or 'voc': ``metric`` if given, else ``config.evaluation.metric``, else 'voc' for
    a ``VocSource`` and 'coco' otherwise."""
    from ssd_jax.data.voc import VocSource
    metric = metric or eval_setting(config, "metric", "") or (
        "voc" if isinstance(source, VocSource) else "coco")
    if metric not in ("coco", "voc"):
        raise ValueError(f"unknown evaluation metric {metric!r} (coco or voc)")
    return metric


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str | os.PathLike,
                        source: Any, out_dir: Optional[str | os.PathLike] = None, *,
                        metric: str = "", voc_mode: str = "", batch_size: int = 0,
                        num_workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``source``: print the metrics table and (process 0) write
    ``out_dir/metrics.json`` and ``out_dir/results.bbox.json``. Returns the metrics.

    ``batch_size`` per process (0: ``config.test.batch_size``), rounded down to a multiple of
    the local device count. ``metric`` as :func:`metric_for`; ``voc_mode`` as
    :func:`evaluate_voc`'s ``mode``. ``config`` is changed in place (the data's classes, see
    :func:`load_detector_for_data`).
    """
    metric = metric_for(config, source, metric)
    det = load_detector_for_data(config, checkpoint, source.class_names)
    devices = jax.local_device_count()
    batch_size = max(devices, (batch_size or config.test.batch_size) // devices * devices)
    batch_size = effective_batch_size(batch_size, len(source))
    log.info("evaluating %s on %r (%s metric, %d images per batch per process)",
             os.fspath(checkpoint), source, metric, batch_size)
    p_detect = make_p_detect(det.model, det.config, det.anchors())
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    if metric == "voc":
        metrics, dets = evaluate_voc(p_detect, det.variables, source, det.config,
                                     mode=voc_mode or None, **kwargs)
        table, results = format_voc_table(metrics), voc_results(dets)
    else:
        metrics, results = evaluate_coco(p_detect, det.variables, source, det.config, **kwargs)
        table = format_metrics_table(metrics)
    if jax.process_index() == 0:
        print(table, flush=True)
        if out_dir is not None:
            write_outputs(out_dir, metrics, results)
    return metrics


def write_outputs(out_dir: str | os.PathLike, metrics: dict[str, Any],
                  results: Sequence[dict]) -> None:
    """``metrics.json`` (strict JSON: nan → null) and ``results.bbox.json`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(json_safe(metrics), f, indent=1, allow_nan=False)
    write_results_json(os.path.join(out_dir, "results.bbox.json"), results)
    log.info("wrote %s/metrics.json and results.bbox.json (%d detections)", out_dir, len(results))
