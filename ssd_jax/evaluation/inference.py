"""Batched, sharded inference over an evaluation split: every device of every host runs the
one detect path (``ssd_jax.inference``) under pmap, and the detections are gathered.

    p_detect = make_p_detect(config, model, anchors)
    indices, detections = run_inference(p_detect, variables, source, config, batch_size=8)

Inside the loader every record is identified by its index in the source (VOC image ids are
strings, and record indices also make multi-host gathering exact).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.contrib.logging import logging_redirect_tqdm

from ssd_jax import postprocess as post
from ssd_jax.data.pipeline import make_eval_loader
from ssd_jax.inference import make_detect_fn
from ssd_jax.models import SSD
from ssd_jax.parallel import AXIS, replicate, shard_batch
from ssd_jax.progress import progress as progress_display

Detections = dict[str, np.ndarray]  # {'boxes' (K, 4) xyxy original px, 'scores' (K,), 'labels'}


def make_p_detect(config: ml_collections.ConfigDict, model: SSD, anchors: Sequence[np.ndarray]):
    """pmapped (replicated variables, uint8 images [D, B, S, S, 3], scale factors [D, B, 2]) →
    Detections with a leading device axis (boxes [D, B, M, 4] in original-image pixels)."""
    return jax.pmap(make_detect_fn(config, model, anchors), axis_name=AXIS)


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
        raise ValueError(
            f"batch_size {batch_size} is not a positive multiple of the {devices} local devices"
        )
    per_process = math.ceil(num_images / jax.process_count())
    return min(batch_size, max(devices, devices * math.ceil(per_process / devices)))


def run_inference(
    p_detect,
    variables: dict,
    source: Any,
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
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
    loader = make_eval_loader(
        _IndexIds(source),
        config,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=num_workers,
    )
    replicated = replicate(variables)
    with logging_redirect_tqdm(loggers=[logging.getLogger("ssd_jax")]):  # logs above the bar
        chunks = _detect_all(p_detect, replicated, loader, batch_size, devices, progress)
    local = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if jax.process_count() > 1:
        local = {
            k: np.asarray(v).reshape((-1,) + v.shape[2:])
            for k, v in multihost_utils.process_allgather(local).items()
        }
    return _unpad(local)


def _detect_all(
    p_detect, replicated: Any, loader: Any, batch_size: int, devices: int, progress: bool
) -> list[dict[str, np.ndarray]]:
    """Every batch of ``loader`` through ``p_detect``, fetching one while the next runs."""
    bar = progress_display(
        len(loader) * batch_size * jax.process_count(),
        desc="eval",
        unit="img",
        disable=not progress or jax.process_index() != 0,
    )
    chunks, pending = [], None
    for batch in loader:
        sharded = shard_batch(
            {"image": batch["image"], "scale_factor": batch["scale_factor"]}, devices
        )
        dets = p_detect(replicated, sharded["image"], sharded["scale_factor"])  # async dispatch
        if pending is not None:  # fetch the previous batch while this one runs
            chunks.append(_to_host(*pending))
            bar.update(batch_size * jax.process_count())
        pending = (dets, batch)
    chunks.append(_to_host(*pending))
    bar.update(batch_size * jax.process_count())
    bar.close()
    return chunks


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
        results.append(
            {
                "boxes": gathered["boxes"][i, :k],
                "scores": gathered["scores"][i, :k],
                "labels": gathered["labels"][i, :k],
            }
        )
    order = np.argsort(indices, kind="stable")
    return [indices[j] for j in order], [results[j] for j in order]
