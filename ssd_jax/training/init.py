"""Start-up: the starting weights of a run.

Order (as scenic documents it): resume from the workdir → initialise from a checkpoint
(``train.load_from``: a full mmdetection SSD .pth / orbax dir, head re-initialised when the class
count differs; or ``train.pretrained_backbone``: the ImageNet VGG16 ``features.N.*`` .pth
mmdetection starts from) → from scratch. A VGG16 (SSD300/512) run refuses to start from scratch
unless ``train.pretrained_backbone`` is ``"none"`` (``check_starting_point``): mmdetection never
trains it from random weights, and a run that did so by accident would waste days.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ml_collections

from ssd_jax.errors import ConfigError
from ssd_jax.models.assembly import zero_variables
from ssd_jax.porting import load_checkpoint_variables, read_state_dict
from ssd_jax.porting.convert import merge_strict, state_dict_to_flat

log = logging.getLogger(__name__)

# mmdetection's SSD300/512 configs: backbone init_cfg Pretrained 'open-mmlab://vgg16_caffe'.
VGG16_CAFFE = "vgg16_caffe-292e1171.pth"
VGG16_CAFFE_URL = f"https://download.openmmlab.com/pretrain/third_party/{VGG16_CAFFE}"
# train.pretrained_backbone's value that starts the backbone from its own init on purpose.
FROM_SCRATCH = "none"


def check_starting_point(config: ml_collections.ConfigDict) -> None:
    """Refuse a run whose VGG16 backbone would start from random weights by omission.

    SSDVGG with neither ``train.load_from`` nor ``train.pretrained_backbone`` raises a one-line
    ``ConfigError`` naming the file mmdetection starts from and ``pretrained_backbone=none``, the
    setting that trains from scratch on purpose. Reads nothing from disk: call it before the
    slow start-up steps.
    """
    t = config.train
    if config.model.backbone.type == "SSDVGG" and not t.load_from and not t.pretrained_backbone:
        raise ConfigError(
            f"{config.get('name', 'this config')} trains VGG16 from ImageNet weights, as "
            f"mmdetection does: download {VGG16_CAFFE} ({VGG16_CAFFE_URL}) and pass "
            "--config.train.pretrained_backbone=PATH, or "
            f"--config.train.pretrained_backbone={FROM_SCRATCH} to train it from scratch"
        )


def initial_variables(config: ml_collections.ConfigDict, init: Callable[[], dict]) -> dict:
    """The starting ``{'params', 'batch_stats'}`` of a run that does not resume: the configured
    starting weights loaded into ``init()``, the fresh initialisation.

    ``init`` is called only where some leaf keeps its fresh value (from scratch, a pretrained
    backbone, a ``load_from`` whose head is re-initialised): a checkpoint that fills the whole
    tree skips the initialisers and their compile (16 s for SSDLite in float64). Refuses
    (``check_starting_point``) a VGG16 backbone left to start from scratch by omission;
    ``train.pretrained_backbone="none"`` keeps its fresh init (SSDVGG's own, as mmdetection's
    without pretrained weights: Kaiming normal, fan_out, bias 0).
    """
    check_starting_point(config)
    t = config.train
    if t.load_from:
        try:  # strictly: every leaf from the file, so the zeros are only its shapes
            return load_checkpoint_variables(t.load_from, zero_variables(config))
        except ValueError as e:
            if "bbox_head" not in str(e):
                raise
            log.warning(
                "%s does not fit the head (other classes?): loading everything but "
                "bbox_head, which is re-initialised",
                t.load_from,
            )
            return load_checkpoint_variables(
                t.load_from,
                init(),
                allow_missing_prefixes=("bbox_head",),
                ignore_prefixes=("bbox_head",),
            )
    if t.pretrained_backbone == FROM_SCRATCH:
        log.info(
            "train.pretrained_backbone=%s: the backbone starts from its own init", FROM_SCRATCH
        )
        return init()
    if t.pretrained_backbone:
        state_dict, _ = read_state_dict(t.pretrained_backbone)
        # open-mmlab://vgg16_caffe: backbone-only keys ``features.N.*`` (or already prefixed).
        state_dict = {
            k if k.startswith("backbone.") else f"backbone.{k}": v
            for k, v in state_dict.items()
            if k.startswith(("features.", "backbone.features."))
        }
        if not state_dict:
            raise ValueError(f"{t.pretrained_backbone}: no features.N.* (VGG) keys found")
        loaded = state_dict_to_flat(state_dict)
        merged = merge_strict(
            loaded, init(), t.pretrained_backbone, allow_missing_prefixes=("neck", "bbox_head")
        )
        log.info(
            "loaded the VGG16 backbone from %s (%d tensors)", t.pretrained_backbone, len(loaded)
        )
        return merged
    return init()
