"""mmdetection's own SSD network (backbone, neck, head; raw outputs, no NMS) exported to ONNX with
``torch.onnx.export``, as a user of mmdetection would deploy it: the reference that
``benchmark.py --reference-onnx`` times in ONNX Runtime beside ssd_jax's backends, in one run.

Run with mmdetection's environment (``../shared/mmdet_reference/setup.sh``):

    /tmp/mmdet_ref/venv/bin/python scripts/export_mmdet_onnx.py ssdlite_mobilenetv2_320_coco \
        ../shared/fixtures/ssdlite_mobilenetv2_320_coco/checkpoint.pth.xz runs/mmdet_ssdlite.onnx

The graph takes a float32 (B, 3, S, S) normalised image batch (B dynamic) and returns the head's
per-level class and box outputs (NCHW), as ``../shared/mmdet_reference/ort_bench.py`` does.
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


def main(name: str, checkpoint: str, out: str) -> None:
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
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(
        Raw(model),
        (x,),
        out,
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
