"""Per-parameter statistics of mmdetection 3.3.0's freshly initialised SSD models.

Run with the mmdetection environment (see /work/shared/mmdet_reference/README.md):

    /tmp/mmdet_ref/venv/bin/python scripts/init_reference.py [OUT_DIR]

For SSD300, SSD512 and SSDLite it builds the model from mmdetection's own config, calls
``init_weights()`` under ``torch.manual_seed(SEED)`` and writes ``OUT_DIR/<model>.json``
(default ``tests/data/init_reference``): per parameter (and BatchNorm buffer) the mmdetection key,
the OIHW shape, torch's fan_in / fan_out, mmengine's own record of the initialiser that last
changed it, that record as a rule (``rule``), and the sample's mean, std, min, max and fraction of
zeros. ``tests/test_init.py`` checks ssd_jax's initialisers against these.

Nothing is downloaded: the SSD300/512 backbone's ``init_cfg`` (``Pretrained``,
``open-mmlab://vgg16_caffe``, i.e. vgg16_caffe-292e1171.pth) is set aside, so ``SSDVGG`` falls
back to its own init_cfg, as it does in any config without pretrained weights. SSDLite's config
has no pretrained weights and is used unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

import mmdet
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import get_external_models

SEED = 0
CONFIGS = {
    "ssd300_coco": "ssd/ssd300_coco.py",
    "ssd512_coco": "ssd/ssd512_coco.py",
    "ssdlite_mobilenetv2_320_coco": "ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
}
CFG_ROOT = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
OUT_DEFAULT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "init_reference"
)

# mmengine records, per parameter, the last initialiser that changed its mean; the top-level
# ``init_weights`` logs the record and deletes it. Keep a copy instead.
_RECORDS: dict[str, str] = {}


def _keep_init_info(self: BaseModule) -> None:
    for name, param in self.named_parameters():
        _RECORDS[name] = self._params_init_info[param]["init_info"].strip()


BaseModule._dump_init_info = _keep_init_info


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _fields(text: str) -> dict:
    """``'a=0, mode=fan_out, distribution =normal'`` → {'a': 0, 'mode': 'fan_out', ...}."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        value = value.strip()
        try:
            out[key.strip()] = _number(value)
        except ValueError:
            out[key.strip()] = value
    return out


def rule_of(record: str, leaf: str, is_norm: bool, value: torch.Tensor) -> dict:
    """mmengine's record for one parameter as a rule: {'type': ..., arguments}."""
    if m := re.match(r"(\w+)Init: (.*)$", record):
        kind, args = m.group(1), _fields(m.group(2))
        if leaf == "bias":
            return {"type": "constant", "val": float(args["bias"])}
        if kind == "Constant":
            return {"type": "constant", "val": float(args["val"])}
        if kind == "Xavier":
            return {"type": f"xavier_{args['distribution']}", "gain": args["gain"]}
        if kind == "Kaiming":
            return {
                "type": f"kaiming_{args['distribution']}",
                "a": args["a"],
                "mode": args["mode"],
                "nonlinearity": args["nonlinearity"],
            }
        if kind == "Normal":
            return {"type": "normal", "mean": args["mean"], "std": args["std"]}
        if kind == "TruncNormal":
            # torch / mmengine trunc_normal_: a and b are absolute cut-offs, not in units of std.
            return {
                "type": "trunc_normal",
                "mean": args["mean"],
                "std": args["std"],
                "a": args["a"],
                "b": args["b"],
            }
        raise ValueError(f"unknown initialiser record {record!r}")
    if record.startswith("Initialized by user-defined `init_weights` in ConvModule"):
        # mmcv ConvModule.init_weights (runs after the parent's init_cfg for a ConvModule that
        # is a direct child of a BaseModule): kaiming_init(conv, a=0, nonlinearity='relu') with
        # mmengine's defaults mode='fan_out', distribution='normal', bias 0; norm weight 1, bias 0.
        if is_norm:
            return {"type": "constant", "val": 1.0 if leaf == "weight" else 0.0}
        if leaf == "bias":
            return {"type": "constant", "val": 0.0}
        return {"type": "kaiming_normal", "a": 0, "mode": "fan_out", "nonlinearity": "relu"}
    if record.startswith("The value is the same before and after"):
        # Left as built (BatchNorm: torch's weight 1, bias 0); only constants are expected here.
        flat = value.flatten()
        if bool((flat == flat[0]).all()):
            return {"type": "constant", "val": float(flat[0])}
        raise ValueError(f"parameter left with a non-constant construction-time init: {record}")
    raise ValueError(f"unknown initialiser record {record!r}")


def torch_fans(shape: tuple[int, ...]) -> tuple[int, int] | tuple[None, None]:
    if len(shape) < 2:
        return None, None
    return torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def stats(value: torch.Tensor) -> dict:
    v = value.detach().double().flatten()
    return {
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)) if v.numel() > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "zero_fraction": float((v == 0).double().mean()),
    }


def build(name: str):
    cfg = Config.fromfile(os.path.join(CFG_ROOT, CONFIGS[name]))
    note = "backbone init_cfg used as in the config"
    backbone_init = cfg.model.backbone.get("init_cfg")
    if backbone_init and backbone_init.get("type") == "Pretrained":
        ckpt = backbone_init["checkpoint"]
        url = get_external_models().get(ckpt.removeprefix("open-mmlab://"), ckpt)
        note = (
            f"backbone init_cfg {dict(backbone_init)} set aside (it would load {url}); "
            "SSDVGG then applies its own init_cfg"
        )
        cfg.model.backbone.init_cfg = None
    torch.manual_seed(SEED)
    model = MODELS.build(cfg.model)
    _RECORDS.clear()
    model.init_weights()
    return cfg, model, note


def reference(name: str) -> dict:
    cfg, model, note = build(name)
    state = model.state_dict()
    params = dict(model.named_parameters())
    norm_prefixes = {k.rsplit(".", 1)[0] for k in state if k.endswith("running_mean")}
    entries = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        prefix, leaf = key.rsplit(".", 1)
        is_norm = prefix in norm_prefixes
        shape = tuple(value.shape)
        fan_in, fan_out = torch_fans(shape)
        if key in params:
            record = _RECORDS[key]
            rule = rule_of(record, leaf, is_norm, value)
        else:  # BatchNorm running statistics: torch's zeros / ones
            record = "buffer"
            rule = {"type": "constant", "val": 0.0 if leaf == "running_mean" else 1.0}
        entries.append(
            {
                "key": key,
                "shape": list(shape),
                "fan_in": fan_in,
                "fan_out": fan_out,
                "init_info": record,
                "rule": rule,
                **stats(value),
            }
        )
    return {
        "model": name,
        "mmdet_config": CONFIGS[name],
        "seed": SEED,
        "versions": {"mmdet": mmdet.__version__, "torch": torch.__version__.split("+")[0]},
        "note": note,
        # The init_cfg each part applied (the module's default where the config sets none).
        "init_cfg": {
            part: _plain(getattr(model, part).init_cfg)
            for part in ("backbone", "neck", "bbox_head")
        },
        "params": entries,
    }


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def main() -> None:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else OUT_DEFAULT
    os.makedirs(out_dir, exist_ok=True)
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    for name in CONFIGS:
        ref = reference(name)
        path = os.path.join(out_dir, f"{name}.json")
        with open(path, "w") as f:  # one line per tensor
            head = {k: v for k, v in ref.items() if k != "params"}
            f.write(json.dumps(head, indent=1)[:-2] + ',\n "params": [\n')
            f.write(",\n".join("  " + json.dumps(e) for e in ref["params"]) + "\n ]\n}\n")
        rules = sorted({json.dumps(e["rule"], sort_keys=True) for e in ref["params"]})
        print(f"{path}: {len(ref['params'])} tensors; {ref['note']}")
        for r in rules:
            print("   ", r)


if __name__ == "__main__":
    main()
