"""mmdetection's train-mode losses when images have no positive anchor (no ground truth), for
tests/test_per_gpu.py. Run with the reference environment (../shared/mmdet_reference):

    $(bash ../shared/mmdet_reference/setup.sh)/bin/python scripts/make_no_positive_reference.py \
        ../shared/fixtures tests/data/no_positive_reference.json

For each fixture, in float64 (network, input and ground truth): the fixture's batch of 2 with
image 1's ground truth removed, and with both removed. Writes per-image loss_cls / loss_bbox.
"""

import json
import logging
import lzma
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "mmdet_reference"
    ),
)
from refresh_fixture import build, samples_from  # noqa: E402  (the reference scripts' helpers)


def losses_for(model, inputs, samples):
    model.train()
    with torch.no_grad():
        out = model.loss(inputs, samples)
    return {k: [float(v) for v in out[k]] for k in ("loss_cls", "loss_bbox")}


def main() -> None:
    fixtures, out_path = sys.argv[1], sys.argv[2]
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    result = {}
    for name in ("ssd300_coco", "ssdlite_mobilenetv2_320_coco"):
        folder = os.path.join(fixtures, name)
        ref = dict(np.load(os.path.join(folder, "reference.npz")))
        size = json.load(open(os.path.join(folder, "meta.json")))["input_size"]
        with tempfile.TemporaryDirectory() as tmp:
            pth = os.path.join(tmp, "c.pth")
            with lzma.open(os.path.join(folder, "checkpoint.pth.xz")) as f, open(pth, "wb") as g:
                shutil.copyfileobj(f, g)
            state = torch.load(pth, map_location="cpu", weights_only=False)["state_dict"]
        state = {k: (v.double() if torch.is_floating_point(v) else v) for k, v in state.items()}
        model = build(name, state).double()
        inputs = torch.from_numpy(ref["inputs_nchw"]).double()
        cases = {}
        for case, empty in (("image1_empty", (1,)), ("both_empty", (0, 1))):
            r = dict(ref)
            for i in empty:
                r[f"gt_bboxes_{i}"] = np.zeros((0, 4), np.float32)
                r[f"gt_labels_{i}"] = np.zeros((0,), np.int64)
            cases[case] = losses_for(model, inputs, samples_from(r, 2, size, True, torch.float64))
        result[name] = cases
    result["made_by"] = {
        "script": "scripts/make_no_positive_reference.py",
        "torch": torch.__version__,
        "mmdet": __import__("mmdet").__version__,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
