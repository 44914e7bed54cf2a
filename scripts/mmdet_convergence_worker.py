"""mmdetection 3.3.0's side of ``scripts/convergence_vs_mmdet.py`` (run it with mmdetection's
environment, see /work/shared/mmdet_reference/README.md; it imports nothing of ssd_jax).

The twin model is mmdetection's own SSDLite config (``ssdlite_mobilenetv2-scratch_8xb24-600e``)
with the settings of a spec JSON that ``convergence_vs_mmdet.py`` writes from an ssd_jax config:
MobileNetV2 ``out_indices``, neck and head channels, anchors, classes, input size, optimizer,
warm-up, epochs. MobileNetV2's layers after the last ``out_indices`` entry are removed (they feed
nothing; ssd_jax's backbone stops there too), so its state dict has ssd_jax's keys exactly.

    python mmdet_convergence_worker.py init SPEC.json SEED OUT_DIR
        mmdetection's own initialisation (``init_weights`` after ``torch.manual_seed(SEED)``),
        saved as OUT_DIR/init_seedSEED.pth, and the raw head outputs (eval mode) on a seeded
        input batch as OUT_DIR/init_seedSEED_probe.npz (input NCHW, cls_N / box_N per level).
    python mmdet_convergence_worker.py probe SPEC.json SEED WEIGHTS.pth OUT.npz
        the same raw outputs of the twin with the weights of WEIGHTS.pth (a warm start).
    python mmdet_convergence_worker.py train SPEC.json SEED INIT.pth WORK_DIR OUT.json
        mmengine's Runner from INIT.pth: the recipe's full augmentation (Expand,
        MinIoURandomCrop, Resize, RandomFlip, PhotoMetricDistortion), warm-up and cosine
        schedule, validation (CocoMetric) every ``val_interval`` epochs; per-epoch COCO metrics
        and mean training losses to OUT.json.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import types

import numpy as np
import torch


def twin_config(spec: dict):
    """mmdetection's SSDLite config with the spec's settings."""
    import mmdet
    from mmengine.config import Config

    cfg = Config.fromfile(
        os.path.join(
            os.path.dirname(mmdet.__file__),
            ".mim",
            "configs",
            "ssd",
            "ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
        )
    )
    m = cfg.model
    m.backbone.out_indices = tuple(spec["out_indices"])
    m.neck.in_channels = tuple(spec["neck_in_channels"])
    m.neck.out_channels = tuple(spec["neck_out_channels"])
    m.bbox_head.in_channels = tuple(spec["neck_out_channels"])
    m.bbox_head.num_classes = spec["num_classes"]
    a = m.bbox_head.anchor_generator
    a.strides = list(spec["strides"])
    a.min_sizes = list(spec["min_sizes"])
    a.max_sizes = list(spec["max_sizes"])
    a.ratios = [list(r) for r in spec["ratios"]]
    m.backbone.init_cfg = dict(type="TruncNormal", layer="Conv2d", std=0.03)  # the recipe's
    return cfg


def build_model(spec: dict):
    """The twin, its unused MobileNetV2 tail removed."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = twin_config(spec)
    model = MODELS.build(cfg.model)
    model.bbox_head.loss_cls = types.SimpleNamespace(custom_cls_channels=False)  # mmdet 3.3 bug
    backbone = model.backbone
    keep = max(spec["out_indices"]) + 1
    for name in backbone.layers[keep:]:
        delattr(backbone, name)
    backbone.layers = backbone.layers[:keep]
    return cfg, model


def write_probe(model, spec: dict, seed: int, out: str) -> None:
    """The raw head outputs (eval mode) and anchors on a seeded input batch, to ``out`` (npz)."""
    model.eval()
    size = spec["input_size"]
    x = np.random.RandomState(1000 + seed).normal(0, 1, (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        cls, box = model.bbox_head(model.extract_feat(torch.from_numpy(x)))
    arrays = {"input_nchw": x}
    sizes = [tuple(c.shape[-2:]) for c in cls]
    anchors = model.bbox_head.prior_generator.grid_priors(sizes, device="cpu")
    for i, (c, b) in enumerate(zip(cls, box)):
        arrays[f"cls_{i}"] = c.numpy()
        arrays[f"box_{i}"] = b.numpy()
        arrays[f"anchors_{i}"] = anchors[i].numpy()
    np.savez(out, **arrays)


def cmd_probe(spec: dict, seed: int, pth: str, out: str) -> None:
    _, model = build_model(spec)
    state = torch.load(pth, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=True)
    write_probe(model, spec, seed, out)
    print(json.dumps({"probe": out}))


def cmd_init(spec: dict, seed: int, out_dir: str) -> None:
    _, model = build_model(spec)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model.init_weights()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"init_seed{seed}.pth")
    torch.save({"state_dict": model.state_dict(), "meta": {"seed": seed}}, path)
    write_probe(model, spec, seed, os.path.join(out_dir, f"init_seed{seed}_probe.npz"))
    print(json.dumps({"init": path}))


def keep_coco_stats() -> list:
    """A list that receives each ``COCOeval.summarize``'s ``stats`` at full precision."""
    from pycocotools.cocoeval import COCOeval

    kept: list = []
    summarize = COCOeval.summarize

    def summarize_and_keep(self):
        summarize(self)
        kept.append([float(v) for v in self.stats])

    COCOeval.summarize = summarize_and_keep
    return kept


def cmd_train(spec: dict, seed: int, init: str, work_dir: str, out: str) -> None:
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    cfg, model = build_model(spec)
    size = spec["input_size"]
    data = spec["data"]
    classes = tuple(spec["class_names"])
    train_pipeline = copy.deepcopy(cfg.train_pipeline)
    for t in train_pipeline:
        if t["type"] == "Resize":
            t["scale"] = (size, size)
    test_pipeline = copy.deepcopy(cfg.test_pipeline)
    for t in test_pipeline:
        if t["type"] == "Resize":
            t["scale"] = (size, size)
    state = torch.load(init, map_location="cpu", weights_only=False)["state_dict"]
    records: dict = {"epochs": [], "train": []}
    coco_stats = keep_coco_stats()
    started = time.time()
    total_iters = [0]

    class Recorder(Hook):
        priority = "VERY_HIGH"

        def before_train(self, runner):
            runner.model.load_state_dict(state, strict=True)  # after Runner's init_weights
            total_iters[0] = runner.max_iters
            self.losses: list = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.losses.append([float(outputs[k]) for k in ("loss", "loss_cls", "loss_bbox")])
            it = runner.iter + 1
            if it % 50 == 0 or it == total_iters[0]:
                rate = it / max(time.time() - started, 1e-9)
                eta = (total_iters[0] - it) / max(rate, 1e-9)
                print(
                    f"mmdet seed {seed}: iter {it}/{total_iters[0]}, "
                    f"loss {self.losses[-1][0]:.3f}, "
                    f"{rate:.2f} it/s, ETA {eta / 60:.1f} min",
                    flush=True,
                )

        def after_train_epoch(self, runner):
            mean = np.mean(self.losses, axis=0).tolist() if self.losses else [float("nan")] * 3
            records["train"].append(
                dict(
                    epoch=runner.epoch + 1,  # the loop counts the epoch after this hook
                    iter=runner.iter,
                    loss=mean[0],
                    loss_cls=mean[1],
                    loss_bbox=mean[2],
                    lr=runner.optim_wrapper.get_lr()["lr"][0],
                )
            )
            self.losses = []

        def after_val_epoch(self, runner, metrics=None):
            metrics = metrics or {}
            stats = coco_stats.pop()  # CocoMetric's own figures are rounded to 3 decimals
            records["epochs"].append(
                dict(
                    epoch=runner.epoch,
                    iter=runner.iter,
                    mAP=stats[0],
                    mAP_50=stats[1],
                    mAP_75=stats[2],
                    mAP_rounded=float(metrics.get("coco/bbox_mAP", float("nan"))),
                )
            )
            print(
                f"mmdet seed {seed}: epoch {runner.epoch} val {records['epochs'][-1]}", flush=True
            )

    def dataset(ann_file: str, img_dir: str, pipeline: list, test_mode: bool) -> dict:
        return dict(
            type="CocoDataset",
            data_root=data["root"],
            ann_file=ann_file,
            data_prefix=dict(img=img_dir),
            metainfo=dict(classes=classes),
            filter_cfg=None if test_mode else dict(filter_empty_gt=True, min_size=32),
            pipeline=pipeline,
            test_mode=test_mode,
        )

    optim_wrapper = copy.deepcopy(cfg.optim_wrapper)
    optim_wrapper.optimizer.update(
        lr=spec["lr"], momentum=spec["momentum"], weight_decay=spec["weight_decay"]
    )
    epochs = spec["epochs"]
    param_scheduler = [
        dict(
            type="LinearLR",
            start_factor=spec["warmup_start_factor"],
            by_epoch=False,
            begin=0,
            end=spec["warmup_iters"],
        ),
        dict(type="CosineAnnealingLR", begin=0, T_max=epochs, end=epochs, by_epoch=True, eta_min=0),
    ]
    runner = Runner(
        model=model,
        work_dir=work_dir,
        train_dataloader=dict(
            batch_size=spec["batch_size"],
            num_workers=spec["workers"],
            persistent_workers=spec["workers"] > 0,
            sampler=dict(type="DefaultSampler", shuffle=True),
            dataset=dict(
                type="RepeatDataset",
                times=spec["dataset_repeat"],
                dataset=dataset(data["train_ann"], data["train_img"], train_pipeline, False),
            ),
        ),
        val_dataloader=dict(
            batch_size=8,
            num_workers=0,
            persistent_workers=False,
            drop_last=False,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=dataset(data["val_ann"], data["val_img"], test_pipeline, True),
        ),
        val_evaluator=dict(
            type="CocoMetric",
            ann_file=os.path.join(data["root"], data["val_ann"]),
            metric="bbox",
            format_only=False,
        ),
        train_cfg=dict(
            type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=spec["val_interval"]
        ),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=optim_wrapper,
        param_scheduler=param_scheduler,
        auto_scale_lr=None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=50),
            param_scheduler=dict(type="ParamSchedulerHook"),
        ),
        custom_hooks=[dict(type="NumClassCheckHook")],
        randomness=dict(seed=seed),
        default_scope="mmdet",
        log_level="WARNING",
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo")),
    )
    runner.register_hook(Recorder())
    runner.train()
    import mmcv
    import mmdet
    import mmengine

    records.update(
        seed=seed,
        wall_s=time.time() - started,
        iters=total_iters[0],
        torch_threads=torch.get_num_threads(),
        versions=dict(
            mmdet=mmdet.__version__,
            mmengine=mmengine.__version__,
            mmcv=mmcv.__version__,
            torch=torch.__version__,
        ),
        train_pipeline=[dict(t) for t in train_pipeline],
        param_scheduler=param_scheduler,
        optimizer=dict(optim_wrapper.optimizer),
    )
    with open(out, "w") as f:
        json.dump(records, f, indent=1, default=str)


def main() -> int:
    cmd, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    if cmd == "init":
        cmd_init(spec, int(sys.argv[3]), sys.argv[4])
    elif cmd == "probe":
        cmd_probe(spec, int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif cmd == "train":
        cmd_train(spec, int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        raise SystemExit(f"unknown command {cmd!r} (init, probe or train)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
