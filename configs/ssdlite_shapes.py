"""The embedded default: SSDLite (MobileNetV2) at 128 px on the synthetic shapes data set.

Trains from scratch on a CPU in minutes; no download. ``bash run_default.sh`` does everything
(data, training, evaluation, pictures); by hand:

    python -m ssd_jax.data.synthetic data/shapes --num-train 3000   # + 200 val, 128 px
    python train.py --config configs/ssdlite_shapes.py --workdir runs/shapes

Expected: COCO mAP@0.5 ≥ 0.5 on the val split (see the README for the measured figure).
"""

import ml_collections

from ssd_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "ssdlite_mobilenetv2_320_coco")
    c.name = "ssdlite_shapes"
    c.input_size = 128  # the generated images' size: no resize
    c.class_names = ("ellipse", "rectangle", "triangle", "star")
    c.category_ids = (1, 2, 3, 4)  # ssd_jax.data.synthetic's categories
    c.model.num_classes = 4
    # A shorter MobileNetV2: its stride-8 (32 channels) and stride-16 (96 channels) layers feed
    # the neck, so the 16 px shapes meet a 16×16 first level; feature maps 16, 8, 4, 2, 1, 1.
    c.model.backbone.out_indices = (2, 4)
    c.model.neck.in_channels = (32, 96)
    c.model.neck.out_channels = (32, 96, 256, 256, 128, 128)
    # SSDLite's anchors rescaled to the shapes' boxes (sides 10–98 px, median 33 px at 128 px).
    c.model.anchors.strides = (8, 16, 32, 64, 128, 128)
    c.model.anchors.min_sizes = (16, 28, 44, 64, 90, 116)
    c.model.anchors.max_sizes = (28, 44, 64, 90, 116, 128)
    c.data.source = "coco"
    c.data.ann_file = "data/shapes/annotations/instances_train.json"
    c.data.img_dir = "data/shapes/train"
    c.data.val_ann_file = "data/shapes/annotations/instances_val.json"
    c.data.val_img_dir = "data/shapes/val"
    c.data.workers = 1  # one decoding process besides the trainer: the default machine has 2 cores
    # Train and val images come from one generator, and 8 epochs are few: flips only (SSD's
    # Expand, MinIoURandomCrop and PhotoMetricDistortion slow the first epochs down).
    c.augment.expand_ratio = (1.0, 1.0)
    c.augment.min_iou_crop = False
    c.augment.photometric = False
    c.train.max_boxes = 8  # the generator draws at most 6 shapes per image
    c.train.batch_size = 8
    c.train.per_gpu_batch = 0  # one "GPU": the whole batch, whatever --config.train.batch_size
    c.train.log_every = 10
    c.train.ckpt_every = 1000
    c.train.keep_ckpts = 1
    c.train.eval_every_epochs = 2  # about 6 s each: points for the mAP curve
    c.optimizer.lr = 0.05
    c.optimizer.base_batch_size = 8
    c.schedule.epochs = 8  # of the 3000 generated train images: 3000 steps
    c.schedule.dataset_repeat = 1
    c.schedule.warmup_iters = 100
    c.test.batch_size = 16
    return c
