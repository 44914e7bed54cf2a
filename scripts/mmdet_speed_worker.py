"""mmdetection 3.3.0's side of ``scripts/compare_speed.py --against-mmdet``: run with the python
of ``../shared/mmdet_reference`` (``bash ../shared/mmdet_reference/setup.sh`` prints it).

    MMDET_PYTHON scripts/mmdet_speed_worker.py CONFIG_NAME BATCH PRECISION KINDS

Builds mmdetection's own model of a bundled config (random initialisation, PyTorch on the CPU,
fp32 whatever PRECISION says: mmdetection's CPU baseline), a fixed batch of random images with
8 random boxes each, and then speaks the protocol of ``compare_speed``'s workers: one JSON line
``{"compile_s": {...}, "peak_rss_mb": ...}`` when ready, then for every request line
``{"kind": K, "iters": I}`` the wall and CPU seconds that I calls took. Kinds: ``train`` (loss,
backward and an SGD step with the config's momentum and weight decay), ``inference`` (the
network's raw outputs, no_grad) and ``detect`` (``model.predict``: decoding and NMS).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import types

import mmdet
import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

CONFIGS = {
    "ssd300_coco": "ssd/ssd300_coco.py",
    "ssd512_coco": "ssd/ssd512_coco.py",
    "ssdlite_mobilenetv2_320_coco": "ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
}


def main() -> int:
    name, batch, kinds = sys.argv[1], int(sys.argv[2]), sys.argv[4].split(",")
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(root, CONFIGS[name]))
    cfg.model.backbone.init_cfg = None  # random weights: nothing to download
    model = MODELS.build(cfg.model)
    model.init_weights()
    # mmdet 3.3.0's SSDHead never sets loss_cls, which the shared post-processing reads
    model.bbox_head.loss_cls = types.SimpleNamespace(custom_cls_channels=False)
    size = cfg.get("input_size", 320)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32))
    samples = []
    for _ in range(batch):
        sample = DetDataSample()
        sample.set_metainfo(
            dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        xy = rng.uniform(0, size * 0.7, (8, 2))
        wh = rng.uniform(size * 0.05, size * 0.3, (8, 2))
        gt = InstanceData()
        gt.bboxes = torch.from_numpy(np.concatenate([xy, xy + wh], -1).astype(np.float32))
        gt.labels = torch.from_numpy(rng.integers(0, 80, 8))
        sample.gt_instances = gt
        samples.append(sample)
    opt = cfg.optim_wrapper.optimizer
    sgd = torch.optim.SGD(
        model.parameters(), lr=1e-4, momentum=opt.momentum, weight_decay=opt.weight_decay
    )

    def train():
        model.train()
        sgd.zero_grad()
        losses = model.loss(x, samples)
        sum(sum(v) if isinstance(v, list) else v for v in losses.values()).backward()
        sgd.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(x, mode="tensor")

    def detect():
        model.eval()
        with torch.no_grad():
            model.predict(x, samples, rescale=True)

    fns = {"train": train, "inference": inference, "detect": detect}
    ready = {"compile_s": {}, "threads": torch.get_num_threads(), "precision": "fp32"}
    for kind in kinds:
        t0 = time.perf_counter()
        fns[kind]()
        ready["compile_s"][kind] = time.perf_counter() - t0
        fns[kind]()
    ready["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        fn = fns[request["kind"]]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(request["iters"]):
            fn()
        reply = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        print(json.dumps(reply | {"peak_rss_mb": _peak_rss_mb()}), flush=True)
    return 0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
