"""``Detector``: a config's SSD with its weights, for inference (and the acceptance API).

    det = Detector.from_checkpoint("configs/ssd300_coco.py", "model.pth")  # or an orbax dir
    cls_logits, box_deltas = det.forward(x)  # x (N, S, S, 3) normalised float32
    anchors = det.anchors()                  # per level (H·W·A, 4) xyxy input pixels
    results = det.predict(images)            # uint8 RGB HWC images of any size
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import objective
from ssd_jax import postprocess as post
from ssd_jax.anchors import SSDAnchorGenerator
from ssd_jax.config import load_config
from ssd_jax.models import SSD, build_model
from ssd_jax.models.ssd import compute_dtype
from ssd_jax.preprocess import preprocess_batch


def anchor_generator(config: ml_collections.ConfigDict) -> SSDAnchorGenerator:
    a = config.model.anchors
    return SSDAnchorGenerator(config.input_size, a.strides, a.ratios, a.basesize_ratio_range,
                              a.min_sizes, a.max_sizes)


def featmap_sizes(model: SSD, input_size: int) -> list[tuple[int, int]]:
    """(H, W) of every level for a square input, from the model's shapes (no compute)."""
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    feats = jax.eval_shape(functools.partial(model.apply, method=SSD.features), variables, x)
    return [tuple(f.shape[1:3]) for f in feats]


def init_variables(model: SSD, input_size: int, seed: int = 0) -> dict:
    """Freshly initialised ``{'params', 'batch_stats'}`` (batch_stats empty for VGG)."""
    x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), x)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


class Detector:
    """An SSD network, its variables, anchors and test settings."""

    def __init__(self, config: ml_collections.ConfigDict, variables: Optional[dict] = None):
        self.config = config
        self._anchor_gen = anchor_generator(config)
        precision = config.get("precision", "fp32")
        self.model = build_model(config.model, self._anchor_gen.num_anchors, precision=precision)
        # Inputs (and the loss's ground truth) are float32, float64 in fp64 mode.
        self.input_dtype = jnp.promote_types(compute_dtype(precision), jnp.float32)
        self.featmap_sizes = featmap_sizes(self.model, config.input_size)
        self._anchors = self._anchor_gen.grid_anchors(self.featmap_sizes)
        self.variables = variables if variables is not None else init_variables(
            self.model, config.input_size)
        self._forward, self._detect = _compiled_functions(config, self.model)

    @classmethod
    def from_checkpoint(cls, config: str | os.PathLike | ml_collections.ConfigDict,
                        checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> "Detector":
        """Build from a config (path or ConfigDict) and an mmdetection ``.pth`` or orbax directory."""
        from ssd_jax.porting import load_checkpoint_variables  # avoid an import cycle
        if not isinstance(config, ml_collections.ConfigDict):
            config = load_config(config, overrides)
        det = cls(config)
        det.variables = load_checkpoint_variables(checkpoint, det.variables)
        return det

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)

    def forward(self, x: np.ndarray | jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """Raw head outputs per level: (N, H, W, A·(C+1)) logits and (N, H, W, A·4) deltas."""
        return self._forward(self.variables, jnp.asarray(x, self.input_dtype))

    def features(self, x: np.ndarray | jax.Array) -> list[jax.Array]:
        """The neck's outputs per level, (N, H, W, C)."""
        return self.model.apply(self.variables, jnp.asarray(x, self.input_dtype), method=SSD.features)

    def anchors(self) -> list[np.ndarray]:
        """Per level (H·W·A, 4) float32 xyxy anchors in input pixels (mmdetection's order)."""
        return [a.copy() for a in self._anchors]

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images → normalised (N, S, S, 3) input and (N, 2) scale factors."""
        return preprocess_batch(images, self.config.input_size, self.config.model.mean,
                                self.config.model.std)

    def detect_batch(self, x: np.ndarray | jax.Array, scale_factors: np.ndarray) -> post.Detections:
        """Fixed-shape detections for a preprocessed batch (boxes in original pixels)."""
        return self._detect(self.variables, jnp.asarray(x, self.input_dtype),
                            [jnp.asarray(a) for a in self._anchors], jnp.asarray(scale_factors))

    def loss(self, x: np.ndarray | jax.Array, gt_boxes: Sequence[np.ndarray],
             gt_labels: Sequence[np.ndarray], train: bool = True) -> dict[str, np.ndarray]:
        """Per-image ``{'loss_cls': (N,), 'loss_bbox': (N,)}`` as mmdetection's ``model.loss``.

        x as in ``forward``; gt_boxes per image (n_i, 4) xyxy input pixels; gt_labels (n_i,).
        Computed in float32 (bf16 networks: their outputs cast to float32), float64 for fp64.
        ``train=True`` uses batch statistics in BatchNorm (the running ones are not changed).
        """
        boxes, labels, valid = objective.pad_ground_truth(list(gt_boxes), list(gt_labels),
                                                          dtype=self.input_dtype)
        out = self._loss(self.variables, jnp.asarray(x, self.input_dtype), boxes, labels, valid,
                         jnp.asarray(self.flat_anchors), train=train)
        return {"loss_cls": np.asarray(out.loss_cls), "loss_bbox": np.asarray(out.loss_bbox)}

    @property
    def flat_anchors(self) -> np.ndarray:
        """All levels' anchors concatenated, (A, 4)."""
        return np.concatenate(self._anchors)

    @functools.cached_property
    def _loss(self):
        t = self.config.train
        return jax.jit(functools.partial(
            objective.ssd_loss, self.model, target_cfg=objective.target_settings(self.config),
            neg_pos_ratio=t.neg_pos_ratio, smoothl1_beta=t.smoothl1_beta), static_argnames="train")

    def predict(self, images: Sequence[np.ndarray], batch_size: Optional[int] = None
                ) -> list[dict[str, np.ndarray]]:
        """Per image ``{'boxes' (K, 4) xyxy original pixels, 'scores' (K,), 'labels' (K,)}``."""
        batch_size = batch_size or self.config.test.batch_size
        results = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start:start + batch_size])
            x, scales = self.preprocess(chunk)
            pad = batch_size - len(chunk) if len(images) > batch_size else 0
            if pad:  # keep one compiled shape for the last, partial batch
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                scales = np.concatenate([scales, np.ones((pad, 2), scales.dtype)])
            dets = jax.device_get(self.detect_batch(x, scales))
            for i in range(len(chunk)):
                k = int(dets.num_valid[i])
                results.append({"boxes": dets.boxes[i, :k], "scores": dets.scores[i, :k],
                                "labels": dets.labels[i, :k]})
        return results


_COMPILED: dict[str, tuple] = {}


def _compiled_functions(config: ml_collections.ConfigDict, model: SSD):
    """jitted (forward, forward + postprocess), shared by Detectors of the same settings."""
    key = json.dumps([config.model.to_json_best_effort(sort_keys=True),
                      config.test.to_json_best_effort(sort_keys=True), config.input_size,
                      config.get("precision", "fp32")])
    if key not in _COMPILED:
        t, box = config.test, config.model.box_coder
        _COMPILED[key] = (jax.jit(functools.partial(model.apply, train=False)), jax.jit(
            functools.partial(_forward_and_postprocess, model, input_size=config.input_size,
                              score_thr=t.score_thr, nms_pre=t.nms_pre, nms_iou=t.nms_iou,
                              max_per_img=t.max_per_img, min_bbox_size=t.min_bbox_size,
                              means=tuple(box.means), stds=tuple(box.stds))))
    return _COMPILED[key]


def _forward_and_postprocess(model: SSD, variables: dict, x: jax.Array, anchors: list[jax.Array],
                             scale_factors: jax.Array, **test_cfg: Any) -> post.Detections:
    cls_logits, box_deltas = model.apply(variables, x, train=False)
    return post.postprocess(cls_logits, box_deltas, anchors, scale_factors, **test_cfg)
