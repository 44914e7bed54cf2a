"""SSDLite (MobileNetV2) 320 on COCO, mirroring mmdetection's
``configs/ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py``.

Train:    python train.py --config configs/ssdlite_mobilenetv2_320_coco.py --workdir runs/ssdlite
mmdetection's zoo checkpoint scores 21.3 box AP on COCO val2017.
"""

import ml_collections

from ssd_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "ssd300_coco")
    c.name = "ssdlite_mobilenetv2_320_coco"
    c.input_size = 320
    # mmdetection's init_cfg: TruncNormal std 0.03 (cut at ±2, absolute) on the backbone's and
    # the neck's Conv2d, Normal std 0.001 on the head's; biases 0, BatchNorm weight 1, bias 0.
    # MobileNetV2's conv1 and conv2 stay Kaiming (mmcv ConvModule.init_weights overrides).
    c.model.backbone = dict(
        type="MobileNetV2", out_indices=(4, 7), conv_init=dict(type="TruncNormal", std=0.03)
    )
    c.model.neck = dict(
        in_channels=(96, 1280),
        out_channels=(96, 1280, 512, 256, 256, 128),
        level_strides=(2, 2, 2, 2),
        level_paddings=(1, 1, 1, 1),
        l2_norm_scale=None,
        last_kernel_size=3,
        use_depthwise=True,
        norm=True,
        act="relu6",
        conv_init=dict(type="TruncNormal", std=0.03),
    )
    c.model.head = dict(
        use_depthwise=True, norm=True, act="relu6", conv_init=dict(type="Normal", std=0.001)
    )
    # Anchor sizes are given explicitly instead of the SSD300 rule.
    c.model.anchors = dict(
        strides=(16, 32, 64, 107, 160, 320),
        ratios=((2, 3),) * 6,
        basesize_ratio_range=None,
        min_sizes=(48, 100, 150, 202, 253, 304),
        max_sizes=(100, 150, 202, 253, 304, 320),
    )
    c.model.std = (58.395, 57.12, 57.375)
    c.train.batch_size = 192  # 8 GPUs × 24 images
    c.train.per_gpu_batch = 24
    c.train.eval_every_epochs = 5  # mmdet train_cfg val_interval=5 (SSD300/512: 1)
    c.optimizer = dict(
        lr=0.015, momentum=0.9, weight_decay=4e-5, base_batch_size=192, auto_scale_lr=True
    )
    c.schedule = dict(
        type="cosine",
        epochs=120,
        milestones=(),
        gamma=0.1,
        warmup_iters=500,
        warmup_start_factor=0.001,
        dataset_repeat=5,
    )
    return c
