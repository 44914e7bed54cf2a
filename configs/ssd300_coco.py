"""SSD300 (VGG16) on COCO, mirroring mmdetection's ``configs/ssd/ssd300_coco.py``.

Train:    python train.py --config configs/ssd300_coco.py --workdir runs/ssd300
Evaluate: python eval.py --config configs/ssd300_coco.py --checkpoint ssd300_coco_xxx.pth
mmdetection's zoo checkpoint scores 25.5 box AP on COCO val2017.
"""

import ml_collections

from ssd_jax.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "ssd300_coco"
    c.input_size = 300
    c.class_names = COCO_CLASSES
    # The data set's category id of each label (what COCO results files carry); training on
    # other data replaces both with the data's.
    c.category_ids = COCO_CATEGORY_IDS

    # ---- model (mmdet: model.backbone / neck / bbox_head) ----
    c.model = ml_collections.ConfigDict()
    c.model.num_classes = len(COCO_CLASSES)
    # conv_init: each part's init_cfg for its Conv2d layers (mmengine's type and arguments; bias 0
    # unless given). mmdetection loads the backbone from open-mmlab://vgg16_caffe
    # (train.pretrained_backbone, required to train); with pretrained_backbone="none" SSDVGG's
    # own init_cfg applies: Kaiming (fan_out, relu, normal). SSDNeck and SSDHead: Xavier
    # uniform; L2Norm starts at l2_norm_scale.
    c.model.backbone = dict(
        type="SSDVGG",
        out_indices=(3, 4),  # relu4_3, relu7
        conv_init=dict(type="Kaiming"),
    )
    c.model.neck = dict(
        in_channels=(512, 1024),
        out_channels=(512, 1024, 512, 256, 256, 256),
        level_strides=(2, 2, 1, 1),
        level_paddings=(1, 1, 0, 0),
        l2_norm_scale=20.0,
        last_kernel_size=3,
        use_depthwise=False,
        norm=False,
        act="relu",
        conv_init=dict(type="Xavier", distribution="uniform"),
    )
    c.model.head = dict(
        use_depthwise=False,
        norm=False,
        act="relu",
        conv_init=dict(type="Xavier", distribution="uniform"),
    )
    c.model.anchors = dict(
        strides=(8, 16, 32, 64, 100, 300),
        ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        basesize_ratio_range=(0.15, 0.9),
        min_sizes=None,
        max_sizes=None,
    )
    c.model.box_coder = dict(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))
    # data_preprocessor: RGB, (x - mean) / std
    c.model.mean = (123.675, 116.28, 103.53)
    c.model.std = (1.0, 1.0, 1.0)

    # ---- test_cfg ----
    c.test = dict(
        nms_pre=1000, score_thr=0.02, nms_iou=0.45, min_bbox_size=0.0, max_per_img=200, batch_size=8
    )

    # ---- train_cfg (MaxIoUAssigner, hard negatives, smooth L1) ----
    c.train = dict(
        pos_iou_thr=0.5,
        neg_iou_thr=0.5,
        min_pos_iou=0.0,
        gt_max_assign_all=False,
        neg_pos_ratio=3,
        smoothl1_beta=1.0,
        max_boxes=100,
        batch_size=64,  # global batch: 8 GPUs × 8 images
        # Images per "GPU": BatchNorm statistics and the loss's avg_factor are taken
        # per group of this many images, as mmdetection's per-GPU batch; 0 = the
        # whole global batch (SyncBN, one avg_factor).
        per_gpu_batch=8,
        seed=0,
        log_every=50,
        ckpt_every=2000,
        keep_ckpts=3,
        eval_every_epochs=1,  # mmdet schedule_2x's train_cfg val_interval=1
        max_nonfinite_in_row=10,
        # vgg16_caffe-292e1171.pth (README "Where to get the weights"), or "none": from scratch
        pretrained_backbone="",
        load_from="",
        num_steps=0,
    )  # num_steps 0: schedule.epochs × steps per epoch

    # ---- optimizer and schedule (mmdet: optim_wrapper, param_scheduler, schedule_2x) ----
    # lr is for base_batch_size images; other global batches scale it linearly
    # (auto_scale_lr; mmdetection's --auto-scale-lr, off there by default).
    c.optimizer = dict(
        lr=2e-3, momentum=0.9, weight_decay=5e-4, base_batch_size=64, auto_scale_lr=True
    )
    c.schedule = dict(
        type="multistep",
        epochs=24,
        milestones=(16, 22),
        gamma=0.1,
        warmup_iters=500,
        warmup_start_factor=0.001,
        dataset_repeat=5,
    )

    # ---- data and augmentation (mmdet: train_pipeline) ----
    c.data = dict(
        source="coco",
        ann_file="data/coco/annotations/instances_train2017.json",
        img_dir="data/coco/train2017",
        val_ann_file="data/coco/annotations/instances_val2017.json",
        val_img_dir="data/coco/val2017",
        tfds_name="coco/2017",
        workers=2,
        min_size=32,
        shuffle=True,
        voc_root="data",
        voc_split="trainval",
        val_voc_split="test",
        voc_year="2007",
    )
    # Validation / eval.py metric: "coco" (pycocotools box AP) or "voc" (mAP@0.5, area or
    # 11points); "" chooses by the data: "voc" for VOC sources, else "coco".
    c.evaluation = dict(metric="", voc_mode="area")
    c.augment = dict(
        expand_ratio=(1.0, 4.0),
        min_iou_crop=True,
        min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size=0.3,
        flip_prob=0.5,
        photometric=True,
        brightness_delta=32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta=18,
    )
    c.precision = "fp32"
    return c
