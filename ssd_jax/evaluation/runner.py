"""Batched, jitted inference over an evaluation split, sharded over devices and hosts, then COCO
(or VOC) metrics. Shared by ``eval.py`` and training's validation."""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from ssd_jax import postprocess as post
from ssd_jax.data.pipeline import make_eval_loader
from ssd_jax.evaluation.coco import coco_evaluate, detections_to_coco_results
from ssd_jax.models import SSD
from ssd_jax.training.step import AXIS, normalize_on_device, replicate, shard_batch

log = logging.getLogger(__name__)

# mmdetection's CocoMetric evaluates with proposal_nums (100, 300, 1000).
MMDET_MAX_DETS = (100, 300, 1000)


def make_p_detect(model: SSD, config: ml_collections.ConfigDict, anchors: list[np.ndarray]):
    """pmapped (replicated variables, uint8 images [D, B, S, S, 3], scale factors [D, B, 2]) →
    Detections with a leading device axis."""
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


def run_inference(p_detect, variables: dict, source: Any, config: ml_collections.ConfigDict, *,
                  batch_size: int, num_workers: int = 0, progress: bool = True
                  ) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Detections for every image of ``source`` (all hosts' shards gathered), in source order.

    ``batch_size`` is per process and must be divisible by the local device count.
    """
    devices = jax.local_device_count()
    loader = make_eval_loader(source, config, batch_size=batch_size,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              num_workers=num_workers)
    replicated = replicate(variables)
    chunks = []
    bar = tqdm(loader, total=len(loader), desc="eval", unit="batch", disable=not progress
               or jax.process_index() != 0)
    for batch in bar:
        sharded = shard_batch({"image": batch["image"], "scale_factor": batch["scale_factor"]}, devices)
        dets = p_detect(replicated, sharded["image"], sharded["scale_factor"])
        chunks.append(jax.tree.map(lambda a: np.asarray(a).reshape((-1,) + a.shape[2:]),
                                   dets._asdict()) | {"image_id": batch["image_id"],
                                                      "valid_image": batch["valid_image"]})
    local = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if jax.process_count() > 1:
        local = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in
                 multihost_utils.process_allgather(local).items()}
    image_ids, results = [], []
    for i in np.flatnonzero(local["valid_image"]):
        k = int(local["num_valid"][i])
        image_ids.append(int(local["image_id"][i]))
        results.append({"boxes": local["boxes"][i, :k], "scores": local["scores"][i, :k],
                        "labels": local["labels"][i, :k]})
    return image_ids, results


def evaluate_coco(p_detect, variables: dict, source: Any, config: ml_collections.ConfigDict, *,
                  batch_size: int, num_workers: int = 0, progress: bool = True
                  ) -> tuple[dict[str, Any], list[dict]]:
    """COCO box metrics (mmdetection's CocoMetric settings) and the COCO results list."""
    image_ids, dets = run_inference(p_detect, variables, source, config, batch_size=batch_size,
                                    num_workers=num_workers, progress=progress)
    results = detections_to_coco_results(image_ids, dets, source.cat_ids)
    metrics = coco_evaluate(source.ann_file, results, class_names=source.class_names,
                            max_dets=MMDET_MAX_DETS)
    return metrics, results
