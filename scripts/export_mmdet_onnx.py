"""mmdetection's own SSD network (backbone, neck, head; raw outputs, no NMS) exported to ONNX with
``torch.onnx.export``, as a user of mmdetection would deploy it: the reference that
``benchmark.py --reference-onnx`` times in ONNX Runtime beside ssd_jax's backends, in one run.

Run with mmdetection's environment (``../shared/mmdet_reference/setup.sh``):

    /tmp/mmdet_ref/venv/bin/python scripts/export_mmdet_onnx.py ssdlite_mobilenetv2_320_coco \
        ../shared/fixtures/ssdlite_mobilenetv2_320_coco/checkpoint.pth.xz runs/mmdet_ssdlite.onnx

The graph takes a float32 (B, 3, S, S) normalised image batch (B dynamic) and returns the head's
per-level class and box outputs (NCHW), as ``../shared/mmdet_reference/ort_bench.py`` does.

With ``--same-job`` (a fourth argument) it does what ssd_jax's raw ONNX export does instead:
uint8 RGB (B, S, S, 3) in, normalised with the config's ``data_preprocessor`` mean and std
(no division where std is 1), and out the class logits (B, A, C+1) and box deltas (B, A, 4) of
all levels in anchor order, as mmdetection's ``predict_by_feat`` permutes and flattens them;
``ssd-jax-benchmark --reference-onnx`` then feeds it the same uint8 images as ours.
"""

import logging
import lzma
import os
import shutil
import sys
import tempfile

import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

CONFIGS = {
    "ssd300_coco": ("ssd/ssd300_coco.py", 300),
    "ssd512_coco": ("ssd/ssd512_coco.py", 512),
    "ssdlite_mobilenetv2_320_coco": ("ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py", 320),
}


class Raw(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        cls, reg = self.model.bbox_head(self.model.extract_feat(x))
        return tuple(cls) + tuple(reg)


class SameJob(torch.nn.Module):
    """uint8 RGB NHWC in; (B, A, C+1) logits and (B, A, 4) deltas out, as ssd_jax's raw export."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.divide = any(float(v) != 1.0 for v in std)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() - self.mean
        if self.divide:
            x = x / self.std
        cls, reg = self.model.bbox_head(self.model.extract_feat(x))
        n = images.shape[0]
        c = self.model.bbox_head.cls_out_channels
        return (
            torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, c) for o in cls], 1),
            torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, 4) for o in reg], 1),
        )


def main(name: str, checkpoint: str, out: str, same_job: bool = False) -> None:
    import mmdet

    register_all_modules()
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.ERROR)
    config_file, size = CONFIGS[name]
    root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(root, config_file))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "c.pth")
        opener = lzma.open if checkpoint.endswith(".xz") else open
        with opener(checkpoint, "rb") as src, open(pth, "wb") as dst:
            shutil.copyfileobj(src, dst)
        state = torch.load(pth, map_location="cpu", weights_only=False)
    model.load_state_dict(state.get("state_dict", state))
    model.eval()
    if same_job:
        pre = cfg.model.data_preprocessor
        net, x = SameJob(model, pre.mean, pre.std), torch.zeros(1, size, size, 3, dtype=torch.uint8)
    else:
        net, x = Raw(model), torch.randn(1, 3, size, size)
    torch.onnx.export(
        net,
        (x,),
        out,
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[4:] not in ([], ["--same-job"]):
        sys.exit(f"usage: {sys.argv[0]} NAME CHECKPOINT OUT.onnx [--same-job]")
    main(*sys.argv[1:4], same_job=sys.argv[4:] == ["--same-job"])
