"""The embedded default: SSDLite (MobileNetV2) at 128 px on the synthetic shapes data set.

Trains from scratch on a CPU in minutes; no download. ``bash run_default.sh`` does everything
(data, training, evaluation, pictures); by hand:

    python -m ssd_jax.data.synthetic data/shapes    # 1000 train + 200 val images, 128 px
    python train.py --config configs/ssdlite_shapes.py --workdir runs/shapes

Expected: COCO mAP@0.5 ≥ 0.5 on the val split (see the README for the measured figure).
"""
import ml_collections

from configs import ssdlite_mobilenetv2_320_coco


def get_config() -> ml_collections.ConfigDict:
    c = ssdlite_mobilenetv2_320_coco.get_config()
    c.name = "ssdlite_shapes"
    # The images are generated at 128 px: no resize, and the smallest compute that keeps a
    # stride-16 first level (8×8) for the 16 px shapes.
    c.input_size = 128
    c.class_names = ("ellipse", "rectangle", "triangle", "star")
    c.model.num_classes = 4
    # SSDLite's anchors rescaled to the shapes' boxes (sides 10–98 px, median 33 px at 128 px);
    # feature maps 8, 4, 2, 1, 1, 1.
    c.model.anchors.strides = (16, 32, 64, 128, 128, 128)
    c.model.anchors.min_sizes = (16, 32, 52, 76, 100, 124)
    c.model.anchors.max_sizes = (32, 52, 76, 100, 124, 128)
    c.data.source = "coco"
    c.data.ann_file = "data/shapes/annotations/instances_train.json"
    c.data.img_dir = "data/shapes/train"
    c.data.val_ann_file = "data/shapes/annotations/instances_val.json"
    c.data.val_img_dir = "data/shapes/val"
    c.data.workers = 1  # one decoding process besides the trainer: the default machine has 2 cores
    # Few epochs of fresh-looking data: a lighter version of SSD's augmentation.
    c.augment.expand_ratio = (1.0, 2.0)
    c.augment.min_crop_size = 0.5
    c.train.max_boxes = 8  # the generator draws at most 6 shapes per image
    c.train.batch_size = 16
    c.train.log_every = 10
    c.train.ckpt_every = 1000
    c.train.keep_ckpts = 1
    c.train.eval_every_epochs = 0  # validate once, at the end
    c.optimizer.lr = 0.05
    c.optimizer.base_batch_size = 16
    c.schedule.epochs = 6
    c.schedule.dataset_repeat = 1
    c.schedule.warmup_iters = 50
    c.test.batch_size = 16
    return c
