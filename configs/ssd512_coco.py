"""SSD512 (VGG16) on COCO, mirroring mmdetection's ``configs/ssd/ssd512_coco.py``.

Train:    python train.py --config configs/ssd512_coco.py --workdir runs/ssd512
mmdetection's zoo checkpoint scores 29.5 box AP on COCO val2017.
"""

import ml_collections

from ssd_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config(__file__, "ssd300_coco")
    c.name = "ssd512_coco"
    c.input_size = 512
    c.model.neck.out_channels = (512, 1024, 512, 256, 256, 256, 256)
    c.model.neck.level_strides = (2, 2, 2, 2, 1)
    c.model.neck.level_paddings = (1, 1, 1, 1, 1)
    c.model.neck.last_kernel_size = 4
    c.model.anchors.strides = (8, 16, 32, 64, 128, 256, 512)
    c.model.anchors.ratios = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
    c.model.anchors.basesize_ratio_range = (0.1, 0.9)
    return c
