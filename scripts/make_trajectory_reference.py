"""Per-step training references from mmdetection 3.3.0's own training machinery.

Writes ``tests/data/trajectory/``: a tiny COCO-format data set (4 PNG images, made here by a
deterministic generator) and, for SSD300 (float32) and SSDLite (float64), the per-iteration lr,
losses and final parameter checksums of N = 8 SGD iterations run by mmengine's ``Runner`` with
mmdetection's model, dataset, data preprocessor, ``OptimWrapper``(SGD) and param schedulers,
from the fixture checkpoints in ``$SSD_JAX_FIXTURES`` (default ../shared/fixtures) for SSD300,
and for SSDLite from a warm start made from its fixture (``--warm-start``; see MODELS_SPEC).
No random augmentation: LoadImageFromFile, LoadAnnotations, Resize(S×S), PackDetInputs.

Run with mmdetection's environment (see /work/shared/mmdet_reference/README.md), from the
repository root:

    /tmp/mmdet_ref/venv/bin/python scripts/make_trajectory_reference.py

Options: ``--check`` runs every model twice and fails unless both runs agree bit for bit;
``--probes`` prints further sensitivity probes against the stored references.
Each reference also gets a ``noise`` entry: SSD300 against the same run in float64, SSDLite
against a run from weights perturbed by 1e-12 (relative), per iteration.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import lzma
import math
import os
import runpy
import shutil
import tempfile
import types

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "tests", "data", "trajectory")
FIXTURES = os.environ.get("SSD_JAX_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))

# COCO's 80 category ids, ascending (the ids of instances_train2017.json): ssd_jax's own table,
# read from its file (mmdetection's environment does not have ssd_jax's dependencies).
COCO_IDS = runpy.run_path(os.path.join(REPO, "ssd_jax", "coco_classes.py"))["COCO_CATEGORY_IDS"]

# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------
# (image id, width, height, boxes): image ids deliberately not in ascending JSON order, so that
# "sequential order" means the JSON's order (as mmdetection's CocoDataset reads it).
# A box is (COCO category id, x, y, w, h) in pixels of the original image; the shape drawn in it
# is an ellipse for 1 (person), a rectangle for 3 (car), a triangle for 18 (dog).
IMAGES = (
    (42, 160, 120, ((1, 18.0, 10.0, 50.0, 96.0), (3, 84.0, 40.0, 70.0, 52.0))),
    (7, 96, 128, ((18, 10.0, 22.0, 80.0, 90.0),)),
    (
        515,
        200,
        150,
        (
            (3, 6.0, 8.0, 64.0, 40.0),
            (1, 120.0, 20.0, 44.0, 110.0),
            (18, 60.0, 70.0, 58.0, 66.0),
            (3, 150.0, 100.0, 50.0, 50.0),
        ),
    ),
    (
        108,
        128,
        80,
        ((1, 4.0, 4.0, 36.0, 72.0), (18, 48.0, 18.0, 44.0, 52.0), (3, 92.0, 30.0, 36.0, 38.0)),
    ),
)
SHAPE_COLOURS = {1: (220, 60, 40), 3: (40, 90, 220), 18: (60, 190, 70)}  # RGB


def _background(rng: np.random.RandomState, width: int, height: int) -> np.ndarray:
    """Textured RGB uint8 background: two sinusoidal gratings plus seeded noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((height, width, 3), np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
        out[..., c] = 128 + 50 * np.sin(fx * x + fy * y + ph) + 25 * np.cos(0.7 * fy * x - fx * y)
    out += rng.normal(0.0, 3.0, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _draw(
    image: np.ndarray, cat: int, x: float, y: float, w: float, h: float, rng: np.random.RandomState
) -> None:
    """Draws the category's shape filling the box [x, x+w) × [y, y+h) (integer boxes)."""
    x0, y0, x1, y1 = int(x), int(y), int(x + w) - 1, int(y + h) - 1
    colour = tuple(int(np.clip(v + rng.randint(-20, 21), 0, 255)) for v in SHAPE_COLOURS[cat])
    if cat == 1:
        cv2.ellipse(
            image,
            ((x0 + x1) // 2, (y0 + y1) // 2),
            ((x1 - x0) // 2, (y1 - y0) // 2),
            0,
            0,
            360,
            colour,
            -1,
        )
    elif cat == 3:
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
    else:
        pts = np.array([[x0, y1], [x1, y1], [(x0 + x1) // 2, y0]], np.int32)
        cv2.fillPoly(image, [pts], colour)
    # a little texture on the shape too
    patch = image[y0 : y1 + 1, x0 : x1 + 1].astype(np.int16)
    image[y0 : y1 + 1, x0 : x1 + 1] = np.clip(patch + rng.randint(-3, 4, patch.shape), 0, 255)


def make_dataset(out_dir: str, class_names: tuple) -> dict:
    """Writes images/*.png and annotations.json; returns the COCO dict."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rng = np.random.RandomState(20261130)
    images, annotations = [], []
    ann_id = 1
    for img_id, width, height, boxes in IMAGES:
        img = _background(rng, width, height)
        for cat, x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
            _draw(img, cat, x, y, w, h, rng)
            annotations.append(
                dict(
                    id=ann_id,
                    image_id=img_id,
                    category_id=cat,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                )
            )
            ann_id += 1
        name = f"{img_id:06d}.png"
        # cv2 writes BGR; the file holds the RGB image `img`.
        assert cv2.imwrite(
            os.path.join(out_dir, "images", name), img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )
        images.append(dict(id=img_id, file_name=name, width=width, height=height))
    categories = [dict(id=i, name=n, supercategory="none") for i, n in zip(COCO_IDS, class_names)]
    coco = dict(
        info=dict(description="ssd_jax training-trajectory test set (synthetic)"),
        images=images,
        annotations=annotations,
        categories=categories,
    )
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f, indent=1)
    return coco


# ---------------------------------------------------------------------------------------------
# mmdetection training
# ---------------------------------------------------------------------------------------------
WARM_START = "ssdlite_warm_start.pth.xz"  # in DATA_DIR, made by --warm-start
WARM_START_STEPS, WARM_START_LR = 60, 0.01
MODELS_SPEC = {
    "ssd300_coco": dict(
        config="ssd/ssd300_coco.py",
        input_size=300,
        dtype="float32",
        # The fixture's random weights give gradients ~5e3 (head convs ~1e4 × their norm):
        # lr 1e-3 diverges by iteration 4; 3e-7 lowers the loss smoothly (14.9 → 11.5).
        lr=3e-7,
        momentum=0.9,
        weight_decay=5e-4,
        epoch_scheduler=dict(
            type="MultiStepLR", begin=0, end=4, by_epoch=True, milestones=[2, 3], gamma=0.1
        ),
        checksum_keys=(
            "backbone.features.0.weight",
            "neck.l2_norm.weight",
            "neck.extra_layers.1.0.conv.weight",
            "bbox_head.cls_convs.0.0.weight",
            "bbox_head.cls_convs.0.0.bias",
            "bbox_head.reg_convs.5.0.weight",
        ),
    ),
    "ssdlite_mobilenetv2_320_coco": dict(
        config="ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
        input_size=320,
        # From the fixture's random weights SSDLite training is chaotic at batch 2 (see the
        # README): a 1e-12 weight perturbation reaches ~1e-3 by iteration 3 for lr 1e-7 … 0.05
        # alike. So it starts from a trained point instead (``--warm-start`` makes it: 60 of
        # mmdetection's own SGD steps at lr 0.01 on these four images, from the fixture, then
        # rounded to bfloat16 values so that the file compresses), where it is not chaotic
        # (the reference's ``noise``), at the warm start's lr.
        start=WARM_START,
        dtype="float64",
        lr=0.01,
        momentum=0.9,
        weight_decay=4e-5,
        # Batch 4 (one iteration per epoch, 8 epochs): at batch 2 the 1×1 levels' BatchNorm
        # over 2 values keeps even the warm start chaotic (a 1e-12 perturbation reached 1.6e-3
        # by iteration 7, measured 2026-12-05).
        batch_size=4,
        epochs=8,
        epoch_scheduler=dict(
            type="CosineAnnealingLR", begin=0, end=8, T_max=8, by_epoch=True, eta_min=0.0
        ),
        checksum_keys=(
            "backbone.conv1.conv.weight",
            "backbone.conv1.bn.weight",
            "backbone.layer4.0.depthwise_conv.conv.weight",
            "neck.extra_layers.3.1.pointwise_conv.conv.weight",
            "bbox_head.cls_convs.0.1.weight",
            "bbox_head.cls_convs.0.1.bias",
            "bbox_head.reg_convs.5.1.weight",
            "backbone.conv1.bn.running_mean",
            "backbone.conv1.bn.running_var",
            "neck.extra_layers.3.1.pointwise_conv.bn.running_mean",
            "neck.extra_layers.3.1.pointwise_conv.bn.running_var",
            "bbox_head.cls_convs.5.0.bn.running_var",
            "bbox_head.cls_convs.5.0.bn.num_batches_tracked",
        ),
    ),
}
BATCH_SIZE = 2
NUM_EPOCHS = 4
WARMUP = dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=3)


def start_checkpoint(name: str) -> str:
    """The .pth.xz a model's run starts from: its warm start, else the fixture checkpoint."""
    start = MODELS_SPEC[name].get("start")
    if start:
        return os.path.join(DATA_DIR, start)
    return os.path.join(FIXTURES, name, "checkpoint.pth.xz")


def load_state_dict(name: str):
    import torch

    with tempfile.NamedTemporaryFile(suffix=".pth") as tmp:
        with lzma.open(start_checkpoint(name)) as f:
            shutil.copyfileobj(f, tmp)  # the legacy (non-zip) format needs a real file
        tmp.flush()
        return torch.load(tmp.name, map_location="cpu", weights_only=False)["state_dict"]


def _box_tensor(boxes):
    """mmdet's HorizontalBoxes or a plain (n, 4) tensor → the tensor."""
    return boxes.tensor if hasattr(boxes, "tensor") else boxes


def checksums(model, keys) -> dict:
    state = model.state_dict()
    out = {}
    for k in keys:
        t = state[k].detach().double()
        out[k] = dict(
            shape=list(t.shape),
            sum=float(t.sum()),
            sum_sq=float((t * t).sum()),
            sum_abs=float(t.abs().sum()),
        )
    return out


def run(
    name: str,
    dtype: str,
    work_dir: str,
    *,
    weight_decay: float | None = None,
    normalize_in_float32: bool = False,
    perturb_weights: float = 0.0,
    batch_size: int | None = None,
    allow_nonfinite: bool = False,
) -> dict:
    """Trains with mmengine's Runner; returns the per-iteration records and final checksums.

    The keyword arguments are for sensitivity probes only: ``weight_decay`` overrides the
    spec's; ``normalize_in_float32`` keeps the data preprocessor's mean/std in float32 when the
    model is float64 (so (x - mean) / std is rounded to float32 before the cast);
    ``perturb_weights`` multiplies every initial parameter element by (1 + perturb · N(0, 1))
    (seeded), a stand-in for another implementation's rounding.
    """
    import mmdet
    import mmengine
    import torch
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    register_all_modules()
    spec = MODELS_SPEC[name]
    batch_size = batch_size or spec.get("batch_size", BATCH_SIZE)
    epochs = spec.get("epochs", NUM_EPOCHS)
    cfg = Config.fromfile(
        os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", spec["config"])
    )
    assert "clip_grad" not in cfg.optim_wrapper and "paramwise_cfg" not in cfg.optim_wrapper
    assert cfg.optim_wrapper.type == "OptimWrapper" and cfg.optim_wrapper.optimizer.type == "SGD"
    size = spec["input_size"]
    f64 = dtype == "float64"

    class Float64DetDataPreprocessor(DetDataPreprocessor):
        """mmdet's DetDataPreprocessor, then inputs and gt boxes cast to float64."""

        def forward(self, data, training=False):
            data = super().forward(data, training)
            data["inputs"] = data["inputs"].double()
            for s in data["data_samples"]:
                b = s.gt_instances.bboxes
                s.gt_instances.bboxes = (
                    type(b)(b.tensor.double()) if hasattr(b, "tensor") else b.double()
                )
            return data

    if f64 and "Float64DetDataPreprocessor" not in MODELS.module_dict:
        MODELS.register_module(module=Float64DetDataPreprocessor)

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no pretrained download; weights come from the fixture
    if f64:
        model_cfg.data_preprocessor.type = "Float64DetDataPreprocessor"
    model = MODELS.build(model_cfg)
    model.bbox_head.loss_cls = types.SimpleNamespace(custom_cls_channels=False)  # mmdet 3.3 bug
    if f64:
        model = model.double()
        if normalize_in_float32:
            dp = model.data_preprocessor
            dp.mean, dp.std = dp.mean.float(), dp.std.float()
    state = load_state_dict(name)

    records, captured, images, after_iter = [], {}, {}, []
    orig_loss = model.loss

    def loss_and_capture(inputs, data_samples):
        losses = orig_loss(inputs, data_samples)
        captured["inputs"] = inputs.detach()
        captured["samples"] = data_samples
        captured["losses"] = {k: [float(v.detach()) for v in vs] for k, vs in losses.items()}
        return losses

    model.loss = loss_and_capture  # records only; computes exactly what model.loss computes

    class Recorder(Hook):
        priority = "VERY_HIGH"

        def before_train(self, runner):
            # After Runner's init_weights: start from the fixture checkpoint (strict).
            m = runner.model
            target = {
                k: (v.to(torch.float64) if f64 and torch.is_floating_point(v) else v)
                for k, v in state.items()
            }
            m.load_state_dict(target, strict=True)
            if perturb_weights:
                g = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    for p in m.parameters():
                        p.mul_(
                            1 + perturb_weights * torch.randn(p.shape, generator=g, dtype=p.dtype)
                        )
            self.initial = checksums(m, spec["checksum_keys"])

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.lr = runner.optim_wrapper.get_lr()["lr"]

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            assert len(set(self.lr)) == 1
            inputs = captured["inputs"].double()
            for k, smp in enumerate(captured["samples"]):
                per_image = dict(
                    ori_shape=list(smp.ori_shape),
                    img_shape=list(smp.img_shape),
                    scale_factor=list(smp.scale_factor),
                    input_sum=float(inputs[k].sum()),
                    input_sum_sq=float((inputs[k] ** 2).sum()),
                    gt_bboxes=_box_tensor(smp.gt_instances.bboxes).double().tolist(),
                    gt_labels=smp.gt_instances.labels.tolist(),
                )
                seen = images.setdefault(int(smp.img_id), per_image)
                assert seen == per_image, (seen, per_image)  # no randomness in the pipeline
            rec = dict(
                iter=runner.iter + 1,
                epoch=runner.epoch + 1,
                lr=self.lr[0],
                loss=float(outputs["loss"]),
                loss_cls=float(outputs["loss_cls"]),
                loss_bbox=float(outputs["loss_bbox"]),
                loss_cls_per_image=captured["losses"]["loss_cls"],
                loss_bbox_per_image=captured["losses"]["loss_bbox"],
                img_ids=[int(s.img_id) for s in captured["samples"]],
                input_dtype=str(captured["inputs"].dtype).replace("torch.", ""),
            )
            records.append(rec)
            after_iter.append(checksums(runner.model, spec["checksum_keys"]))

    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=(size, size), keep_ratio=False),
        dict(type="PackDetInputs"),
    ]
    dataset = dict(
        type="RepeatDataset",
        times=1,
        dataset=dict(
            type="CocoDataset",
            data_root=DATA_DIR,
            ann_file="annotations.json",
            data_prefix=dict(img="images/"),
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline=pipeline,
        ),
    )
    optim_wrapper = copy.deepcopy(cfg.optim_wrapper)
    optim_wrapper.optimizer.update(
        lr=spec["lr"],
        momentum=spec["momentum"],
        weight_decay=spec["weight_decay"] if weight_decay is None else weight_decay,
    )
    param_scheduler = [dict(WARMUP), dict(spec["epoch_scheduler"])]
    recorder = Recorder()
    runner = Runner(
        model=model,
        work_dir=work_dir,
        train_dataloader=dict(
            batch_size=batch_size,
            num_workers=0,
            persistent_workers=False,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=dataset,
        ),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=1000),
        optim_wrapper=optim_wrapper,
        param_scheduler=param_scheduler,
        auto_scale_lr=None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=1),
            param_scheduler=dict(type="ParamSchedulerHook"),
        ),
        custom_hooks=[dict(type="NumClassCheckHook")],
        randomness=dict(seed=0, deterministic=True),
        default_scope="mmdet",
        log_level="WARNING",
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo")),
    )
    runner.register_hook(recorder)
    runner.train()
    model.loss = orig_loss

    n_iters = epochs * (len(IMAGES) // batch_size)
    assert [r["iter"] for r in records] == list(range(1, n_iters + 1)), records
    bad = [(r["iter"], r["loss"]) for r in records if not math.isfinite(r["loss"])]
    assert allow_nonfinite or not bad, f"{name} {dtype}: non-finite losses {bad}"
    return dict(
        records=records,
        images=images,
        initial_checksums=recorder.initial,
        checksums_after_iter=after_iter,
        final_checksums=after_iter[-1],
        versions=dict(
            mmdet=mmdet.__version__,
            mmengine=mmengine.__version__,
            torch=torch.__version__,
            mmcv=__import__("mmcv").__version__,
            opencv=cv2.__version__,
            numpy=np.__version__,
        ),
        data_preprocessor=dict(
            mean=list(cfg.model.data_preprocessor.mean),
            std=list(cfg.model.data_preprocessor.std),
            bgr_to_rgb=cfg.model.data_preprocessor.bgr_to_rgb,
            pad_size_divisor=cfg.model.data_preprocessor.pad_size_divisor,
        ),
        mmdet_optim_wrapper=optim_wrapper.to_dict(),
        mmdet_param_scheduler=param_scheduler,
    )


def expected_lr(spec: dict, i: int) -> float:
    """Closed form of the lr used at 0-based iteration i (see README).

    mmengine's LinearLR(begin=0, end=E) reaches end_factor at iteration E - 1: its
    total_iters is end - begin - 1.
    """
    n = WARMUP["end"] - WARMUP["begin"] - 1
    w = WARMUP["start_factor"] + (1 - WARMUP["start_factor"]) * min(i, n) / n
    e = i // (len(IMAGES) // spec.get("batch_size", BATCH_SIZE))  # 0-based epoch
    s = spec["epoch_scheduler"]
    if s["type"] == "MultiStepLR":
        f = s["gamma"] ** sum(e >= m for m in s["milestones"])
    else:
        f = 0.5 * (1 + math.cos(math.pi * e / s["T_max"]))
    return spec["lr"] * w * f


def describe(name: str, dtype: str, result: dict, coco: dict) -> dict:
    spec = MODELS_SPEC[name]
    s = spec["epoch_scheduler"]
    lr_closed = [expected_lr(spec, r["iter"] - 1) for r in result["records"]]
    lr_err = max(abs(a - r["lr"]) / r["lr"] for a, r in zip(lr_closed, result["records"]))
    assert lr_err < 1e-12, lr_err
    return dict(
        model=name,
        mmdet_config="configs/" + spec["config"],
        fixture_checkpoint=f"{name}/checkpoint.pth.xz",
        start_checkpoint=(
            f"tests/data/trajectory/{spec['start']}" if spec.get("start") else "the fixture's"
        ),
        warm_start=(
            dict(
                script="scripts/make_trajectory_reference.py --warm-start",
                mmdet_script="../shared/mmdet_reference/warm_start.py",
                steps=WARM_START_STEPS,
                lr=WARM_START_LR,
                rounded_to="bfloat16 values (stored as float32)",
            )
            if spec.get("start")
            else None
        ),
        dtype=dtype,
        data=dict(
            dir="tests/data/trajectory",
            ann_file="annotations.json",
            img_dir="images",
            num_images=len(coco["images"]),
            order="the JSON's image order, no shuffle (DefaultSampler shuffle=False)",
            image_ids_in_order=[im["id"] for im in coco["images"]],
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            dataset_repeat=1,
        ),
        pipeline=[
            "LoadImageFromFile",
            "LoadAnnotations(with_bbox=True)",
            f"Resize(scale=({spec['input_size']}, {spec['input_size']}), keep_ratio=False)",
            "PackDetInputs",
        ],
        input_size=spec["input_size"],
        data_preprocessor=result["data_preprocessor"],
        batch_size=spec.get("batch_size", BATCH_SIZE),
        num_processes=1,
        iters_per_epoch=len(IMAGES) // spec.get("batch_size", BATCH_SIZE),
        epochs=spec.get("epochs", NUM_EPOCHS),
        num_iters=len(result["records"]),
        optimizer=dict(
            type="SGD",
            lr=spec["lr"],
            momentum=spec["momentum"],
            weight_decay=spec["weight_decay"],
            nesterov=False,
            dampening=0,
            weight_decay_applies_to="every parameter (no paramwise_cfg), incl. biases, "
            "BatchNorm and L2Norm weights",
            clip_grad=None,
            auto_scale_lr=False,
        ),
        warmup=dict(
            type="LinearLR",
            start_factor=WARMUP["start_factor"],
            end_factor=1.0,
            by_epoch=False,
            begin=WARMUP["begin"],
            end=WARMUP["end"],
            factors_per_iter=[
                WARMUP["start_factor"]
                + (1 - WARMUP["start_factor"]) * min(i, WARMUP["end"] - 1) / (WARMUP["end"] - 1)
                for i in range(4)
            ],
            note="mmengine LinearLR(begin=0, end=E): factor(i) = start + (1 - start) * "
            "min(i, E - 1) / (E - 1), i the 0-based iteration: it reaches 1 at "
            "iteration E - 1, not E",
        ),
        schedule=(
            dict(type="multistep", milestones_epochs=s["milestones"], gamma=s["gamma"])
            if s["type"] == "MultiStepLR"
            else dict(type="cosine", T_max_epochs=s["T_max"], eta_min=s["eta_min"])
        ),
        lr_formula=(
            "lr(i) = lr * (start_factor + (1 - start_factor) * min(i, end - 1) / "
            "(end - 1)) * f(i // iters_per_epoch), i the 0-based iteration; "
            "f(e) = gamma ** #{milestones <= e} (multistep) or "
            "(1 + cos(pi * e / T_max)) / 2 (cosine, eta_min 0)"
        ),
        lr_closed_form_max_rel_err=lr_err,
        mmdet_optim_wrapper=result["mmdet_optim_wrapper"],
        mmdet_param_scheduler=result["mmdet_param_scheduler"],
        tolerance=dict(float32=1e-4, float64=1e-6)[dtype],
        tolerance_note="relative, per iteration, on loss, loss_cls, loss_bbox",
        records=result["records"],
        records_note=(
            "iter 1-based as mmengine logs it; lr the value used by that iteration's "
            "update; losses computed in that iteration's forward pass, i.e. BEFORE "
            "its update (from the weights after iter-1 updates); loss_cls/loss_bbox "
            "= sum over the batch's images of mmdet's per-image losses (each already "
            "divided by the batch's total number of positives), loss = their sum"
        ),
        images={str(k): v for k, v in sorted(result["images"].items())},
        images_note=(
            "per image id, as the loss saw it (identical every epoch): ori_shape and "
            "img_shape (h, w), scale_factor (w, h), input_sum / input_sum_sq of the "
            "network input (after the data preprocessor, CHW, accumulated in float64), "
            "gt_bboxes xyxy in input pixels after Resize, gt_labels"
        ),
        initial_checksums=result["initial_checksums"],
        checksums_after_iter=result["checksums_after_iter"],
        final_checksums=result["final_checksums"],
        checksums_note="over state_dict tensors (PyTorch layout) in float64: sum, sum of squares, "
        "sum of abs; checksums_after_iter[i - 1] = after iteration i's update "
        "(the weights iteration i + 1's loss sees); final = after the last",
        versions=result["versions"],
        command="/tmp/mmdet_ref/venv/bin/python scripts/make_trajectory_reference.py",
    )


def write_json(path: str, obj: dict) -> None:
    """Compact but diffable: one top-level key per line, lists of dicts one item per line."""

    def dump(v, indent):
        if isinstance(v, dict) and indent < 2:
            items = [
                f"{' ' * (indent + 1)}{json.dumps(k)}: {dump(x, indent + 1)}" for k, x in v.items()
            ]
            return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            items = [" " * (indent + 1) + json.dumps(x) for x in v]
            return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
        return json.dumps(v)

    with open(path, "w") as f:
        f.write(dump(obj, 0) + "\n")


def compare(a: dict, b: dict) -> dict:
    """Relative differences per iteration of run a against run b (the reference)."""
    out = {}
    for key in ("loss", "loss_cls", "loss_bbox"):
        out[key] = [abs(x[key] - y[key]) / abs(y[key]) for x, y in zip(a["records"], b["records"])]
    out["checksums_after_iter_rel"] = [
        max(
            abs(ca[k][m] - v[m]) / max(abs(v[m]), 1e-300)
            for k, v in cb.items()
            for m in ("sum", "sum_sq", "sum_abs")
        )
        for ca, cb in zip(a["checksums_after_iter"], b["checksums_after_iter"])
    ]
    out["final_checksums_rel"] = {
        k: max(
            abs(a["final_checksums"][k][m] - v[m]) / max(abs(v[m]), 1e-300)
            for m in ("sum", "sum_sq", "sum_abs")
        )
        for k, v in b["final_checksums"].items()
    }
    return out


def noise(name: str, dtype: str, ref: dict, work_dir: str) -> dict:
    """How far rounding-level differences carry, per iteration: a float32 run against the same
    run in float64; a float64 run against one whose initial weights are perturbed by 1e-12."""
    if dtype == "float32":
        other = run(name, "float64", work_dir)
        method = (
            "this float32 run vs the same mmdetection run in float64 "
            "(model.double(), float64 inputs and gt boxes)"
        )
    else:
        other = run(name, dtype, work_dir, perturb_weights=1e-12, allow_nonfinite=True)
        method = (
            "this run vs the same run with every initial parameter element multiplied "
            "by (1 + 1e-12 N(0, 1)): a stand-in for another implementation's float64 "
            "rounding"
        )
    diff = compare(other, ref)
    per_iter = [
        max(diff[k][i] for k in ("loss", "loss_cls", "loss_bbox"))
        for i in range(len(ref["records"]))
    ]
    return dict(
        method=method,
        rel_loss=diff["loss"],
        rel_loss_cls=diff["loss_cls"],
        rel_loss_bbox=diff["loss_bbox"],
        rel_max=per_iter,
        checksums_after_iter_rel=diff["checksums_after_iter_rel"],
        final_checksums_rel=diff["final_checksums_rel"],
        comparable_iters=[
            r["iter"] for r, v in zip(ref["records"], per_iter) if v <= ref["tolerance"] / 10
        ],
        comparable_note="iterations whose noise (max over loss, loss_cls, loss_bbox) is at most "
        "tolerance / 10: the ones a test can hold to `tolerance`; "
        "checksums_after_iter_rel[i - 1]: max relative difference over the "
        "checksummed tensors (sum, sum_sq, sum_abs) after iteration i",
        other_records=[
            {k: r[k] for k in ("iter", "loss", "loss_cls", "loss_bbox")} for r in other["records"]
        ],
    )


def make_warm_start(name: str) -> None:
    """mmdetection's own float32 SGD steps from the fixture (../shared/mmdet_reference/
    warm_start.py: constant lr, one batch of the four images, no augmentation), then every
    floating-point tensor rounded to a bfloat16 value (kept float32): written as
    DATA_DIR/WARM_START, xz-compressed."""
    import subprocess
    import sys

    import torch

    here = os.path.join(REPO, "..", "shared", "mmdet_reference")
    with tempfile.TemporaryDirectory() as work:
        init, trained = os.path.join(work, "init.pth"), os.path.join(work, "trained.pth")
        with (
            lzma.open(os.path.join(FIXTURES, name, "checkpoint.pth.xz")) as f,
            open(init, "wb") as g,
        ):
            shutil.copyfileobj(f, g)
        subprocess.run(
            [
                sys.executable,
                os.path.join(here, "warm_start.py"),
                name,
                init,
                os.path.join(DATA_DIR, "annotations.json"),
                os.path.join(DATA_DIR, "images"),
                str(WARM_START_STEPS),
                str(WARM_START_LR),
                trained,
            ],
            check=True,
            cwd=here,
        )
        full = torch.load(trained, map_location="cpu", weights_only=False)
        full["state_dict"] = {
            k: (v.to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else v)
            for k, v in full["state_dict"].items()
        }
        full.pop("optimizer", None)
        out = os.path.join(work, "warm.pth")
        torch.save(full, out)
        with (
            open(out, "rb") as f,
            lzma.open(
                os.path.join(DATA_DIR, WARM_START), "wb", preset=9 | lzma.PRESET_EXTREME
            ) as g,
        ):
            shutil.copyfileobj(f, g)
    print("wrote", os.path.join(DATA_DIR, WARM_START))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="run twice; require identical numbers")
    ap.add_argument(
        "--warm-start",
        action="store_true",
        help=f"first (re)make SSDLite's start, {WARM_START}, from the fixture",
    )
    ap.add_argument("--models", nargs="*", default=list(MODELS_SPEC))
    ap.add_argument(
        "--probes",
        action="store_true",
        help="only print sensitivity probes against the stored references: weight "
        "decay 0, and (float64 models) input normalised in float32, initial "
        "weights perturbed by 1e-12 relative",
    )
    ap.add_argument("--probe", default=None, help="run only this probe (its label)")
    ap.add_argument(
        "--noise-only",
        action="store_true",
        help="recompute only the `noise` entry of the stored references",
    )
    args = ap.parse_args()
    from mmdet.datasets import CocoDataset
    from mmengine.logging import MMLogger

    if args.warm_start:
        make_warm_start("ssdlite_mobilenetv2_320_coco")

    logging.getLogger().setLevel(logging.WARNING)
    if args.probes:
        with tempfile.TemporaryDirectory() as work:
            for name in args.models:
                dtype = MODELS_SPEC[name]["dtype"]
                with open(os.path.join(DATA_DIR, f"{name}_reference.json")) as f:
                    ref = json.load(f)
                variants = {"weight_decay=0": dict(weight_decay=0.0)}
                if dtype == "float64":
                    variants["normalize_in_float32"] = dict(normalize_in_float32=True)
                    variants["perturb_weights=1e-12"] = dict(perturb_weights=1e-12)
                for label, kw in variants.items():
                    if args.probe and label != args.probe:
                        continue
                    d = compare(run(name, dtype, os.path.join(work, label), **kw), ref)
                    print(
                        f"{name} {label}: max rel diff per iter",
                        {k: ["%.1e" % v for v in d[k]] for k in ("loss", "loss_cls", "loss_bbox")},
                        "final checksums",
                        {k: "%.1e" % v for k, v in d["final_checksums_rel"].items()},
                    )
        return
    if args.noise_only:
        with tempfile.TemporaryDirectory() as work:
            for name in args.models:
                path = os.path.join(DATA_DIR, f"{name}_reference.json")
                with open(path) as f:
                    ref = json.load(f)
                ref["noise"] = noise(name, ref["dtype"], ref, os.path.join(work, name))
                write_json(path, ref)
                print(
                    name,
                    "noise",
                    ["%.1e" % v for v in ref["noise"]["rel_max"]],
                    "checksums",
                    ["%.1e" % v for v in ref["noise"]["checksums_after_iter_rel"]],
                )
        return
    coco = make_dataset(DATA_DIR, tuple(CocoDataset.METAINFO["classes"]))
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            dtype = MODELS_SPEC[name]["dtype"]
            result = run(name, dtype, os.path.join(work, name))
            MMLogger.get_current_instance().setLevel(logging.WARNING)
            ref = describe(name, dtype, result, coco)
            if args.check:
                again = run(name, dtype, os.path.join(work, name + "_again"))
                same = (
                    again["records"] == result["records"]
                    and again["final_checksums"] == result["final_checksums"]
                )
                print(f"{name}: second run identical: {same}")
                if not same:
                    print(json.dumps(compare(again, result), indent=1))
                    raise SystemExit(f"{name}: not deterministic")
            ref["noise"] = noise(name, dtype, ref, os.path.join(work, name + "_other"))
            path = os.path.join(DATA_DIR, f"{name}_reference.json")
            write_json(path, ref)
            print(f"wrote {path}")
            for r in ref["records"]:
                print(
                    f"  iter {r['iter']} lr {r['lr']:.6g} loss {r['loss']:.8g} "
                    f"cls {r['loss_cls']:.8g} bbox {r['loss_bbox']:.8g} ids {r['img_ids']}"
                )
            d = ref["noise"]
            print(
                "  noise rel max per iter:",
                ["%.1e" % v for v in d["rel_max"]],
                "comparable iters:",
                d["comparable_iters"],
            )
            print(
                "  noise final checksums:",
                {k: "%.1e" % v for k, v in d["final_checksums_rel"].items()},
            )


if __name__ == "__main__":
    main()
