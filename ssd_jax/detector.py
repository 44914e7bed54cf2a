"""``Detector``: the public inference API — a config's SSD with its weights.

det = Detector.from_checkpoint("configs/ssd300_coco.py", "model.pth")  # or an orbax dir
results = det.predict(images)            # uint8 RGB HWC images of any size
cls_logits, box_deltas = det.forward(x)  # x (N, S, S, 3) normalised float32
anchors = det.anchors()                  # per level (H·W·A, 4) xyxy input pixels
losses = det.loss(x, gt_boxes, gt_labels)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import objective
from ssd_jax import postprocess as post
from ssd_jax.config import load_config
from ssd_jax.inference import make_detect_fn
from ssd_jax.models import SSD
from ssd_jax.models.assembly import (
    anchor_generator,
    featmap_sizes,
    init_variables,
    input_dtype,
    model_for,
)
from ssd_jax.preprocess import normalize, resize_batch


class Detector:
    """An SSD network, its variables, anchors and test settings."""

    def __init__(self, config: ml_collections.ConfigDict, variables: dict | None = None):
        self.config = config
        self.model = model_for(config)
        # Inputs (and the loss's ground truth) are float32, float64 in fp64 mode.
        self.input_dtype = input_dtype(config)
        self.featmap_sizes = featmap_sizes(self.model, config.input_size)
        self._anchors = anchor_generator(config).grid_anchors(self.featmap_sizes)
        # On the device once: a loaded checkpoint's NumPy arrays (transposed torch views) would
        # otherwise be copied and made contiguous on every call — SSDLite at batch 1 on a
        # 2-core CPU ran 1.4× slower.
        self.variables = jax.device_put(
            variables if variables is not None else init_variables(self.model, config.input_size)
        )
        self._forward, self._features, self._detect = _compiled_functions(
            config, self.model, self._anchors
        )

    @classmethod
    def from_checkpoint(
        cls,
        config: str | os.PathLike | ml_collections.ConfigDict,
        checkpoint: str | os.PathLike,
        overrides: Sequence[str] = (),
    ) -> Detector:
        """Build from a config (path, bundled name or ConfigDict) and an mmdetection ``.pth`` or
        orbax directory. A checkpoint that does not fit raises CheckpointMismatchError."""
        from ssd_jax.models.assembly import zero_variables
        from ssd_jax.porting import load_checkpoint_variables

        if not isinstance(config, ml_collections.ConfigDict):
            config = load_config(config, overrides)
        variables = load_checkpoint_variables(checkpoint, zero_variables(config), config=config)
        return cls(config, variables)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)

    def forward(self, x: np.ndarray | jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """Raw head outputs per level: (N, H, W, A·(C+1)) logits and (N, H, W, A·4) deltas."""
        return self._forward(self.variables, jnp.asarray(x, self.input_dtype))

    def features(self, x: np.ndarray | jax.Array) -> list[jax.Array]:
        """The neck's outputs per level, (N, H, W, C)."""
        return self._features(self.variables, jnp.asarray(x, self.input_dtype))

    def anchors(self) -> list[np.ndarray]:
        """Per level (H·W·A, 4) float32 xyxy anchors in input pixels (mmdetection's order)."""
        return [a.copy() for a in self._anchors]

    @property
    def flat_anchors(self) -> np.ndarray:
        """All levels' anchors concatenated, (A, 4)."""
        return np.concatenate(self._anchors)

    def resize(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images of any size → uint8 (N, S, S, 3) and (N, 2) scale factors."""
        return resize_batch(images, self.config.input_size)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images → normalised (N, S, S, 3) input (for ``forward``) and (N, 2) scale
        factors (w_scale, h_scale)."""
        resized, scales = self.resize(images)
        return normalize(resized, self.config.model.mean, self.config.model.std), scales

    def detect_batch(
        self, images: np.ndarray | jax.Array, scale_factors: np.ndarray
    ) -> post.Detections:
        """Fixed-shape detections of resized uint8 images (N, S, S, 3) (see ``resize``); boxes
        in original pixels."""
        return self._detect(
            self.variables, jnp.asarray(images, jnp.uint8), jnp.asarray(scale_factors, jnp.float32)
        )

    def predict(
        self, images: Sequence[np.ndarray], batch_size: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Per image ``{'boxes' (K, 4) xyxy original pixels, 'scores' (K,), 'labels' (K,)}``."""
        batch_size = batch_size or self.config.test.batch_size
        results = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            x, scales = self.resize(chunk)
            pad = batch_size - len(chunk) if len(images) > batch_size else 0
            if pad:  # keep one compiled shape for the last, partial batch
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                scales = np.concatenate([scales, np.ones((pad, 2), scales.dtype)])
            dets = jax.device_get(self.detect_batch(x, scales))
            for i in range(len(chunk)):
                k = int(dets.num_valid[i])
                results.append(
                    {
                        "boxes": dets.boxes[i, :k],
                        "scores": dets.scores[i, :k],
                        "labels": dets.labels[i, :k],
                    }
                )
        return results

    def loss(
        self,
        x: np.ndarray | jax.Array,
        gt_boxes: Sequence[np.ndarray],
        gt_labels: Sequence[np.ndarray],
        train: bool = True,
    ) -> dict[str, np.ndarray]:
        """Per-image ``{'loss_cls': (N,), 'loss_bbox': (N,), 'avg_factor': (N,)}`` as
        mmdetection's ``model.loss`` on one GPU's batch (each image's losses are already divided
        by its avg_factor: the batch's positive anchors, each image counting at least 1).

        x as in ``forward``; gt_boxes per image (n_i, 4) xyxy input pixels; gt_labels (n_i,).
        ``train=True`` uses batch statistics in BatchNorm (the running ones are not changed).
        Computed in float32 (bf16 networks: their outputs cast to float32), float64 for fp64.
        """
        boxes, labels, valid = objective.pad_ground_truth(
            list(gt_boxes), list(gt_labels), dtype=self.input_dtype
        )
        out = self._loss(
            self.variables,
            jnp.asarray(x, self.input_dtype),
            boxes,
            labels,
            valid,
            jnp.asarray(self.flat_anchors),
            train=train,
        )
        return {
            "loss_cls": np.asarray(out.loss_cls),
            "loss_bbox": np.asarray(out.loss_bbox),
            "avg_factor": np.asarray(out.avg_factor),
        }

    @functools.cached_property
    def _loss(self):
        return jax.jit(
            functools.partial(
                objective.ssd_loss, self.model, **objective.loss_settings(self.config)
            ),
            static_argnames="train",
        )


_COMPILED: dict[str, tuple] = {}


def _compiled_functions(config: ml_collections.ConfigDict, model: SSD, anchors: list[np.ndarray]):
    """jitted (forward, features, detect), shared by Detectors of the same settings."""
    key = json.dumps(
        [
            config.model.to_json_best_effort(sort_keys=True),
            config.test.to_json_best_effort(sort_keys=True),
            config.input_size,
            config.get("precision", "fp32"),
        ]
    )
    if key not in _COMPILED:
        _COMPILED[key] = (
            jax.jit(functools.partial(model.apply, train=False)),
            jax.jit(functools.partial(model.apply, method=SSD.features)),
            jax.jit(make_detect_fn(config, model, anchors)),
        )
    return _COMPILED[key]
