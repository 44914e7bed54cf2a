"""mmdetection 3.3.0's side of ``scripts/profile_train_step.py``: a per-op profile of its own
train step on the CPU, grouped into the categories that script compares.

    MMDET_PYTHON scripts/mmdet_profile_worker.py CONFIG_NAME BATCH STEPS OUT.json

Run with the python of ``../shared/mmdet_reference`` (mmdetection 3.3.0, torch on the CPU). The
model and the step are ``scripts/mmdet_speed_worker.py``'s: random initialisation, a fixed batch
of random images with 8 random boxes each, ``model.loss``, the sum of the losses, ``backward``
and ``torch.optim.SGD`` with the config's momentum and weight decay, fp32.

After two warm-up steps, ``STEPS`` steps are timed without the profiler (median), then ``STEPS``
more under ``torch.profiler`` (CPU, ``record_shapes``). Each profiler event's self time goes to
one category, decided top-down over the event tree: a convolution (``aten::convolution``,
split by its weight's shape into dense k×k, 1×1 and depthwise) or its ``ConvolutionBackward0``,
BatchNorm (``aten::batch_norm`` / ``NativeBatchNormBackward0``), ReLU/ReLU6 and their backward
nodes, the optimizer (``Optimizer.step`` / ``zero_grad``), and the ``record_function`` scopes
this worker wraps around mmdetection's methods: ``SSDHead.get_anchors`` and ``get_targets``
(anchors, ``MaxIoUAssigner``, sampler, box encoding: "matching") and the rest of
``loss_by_feat`` plus the loss sum ("loss"). A backward node that is none of the above takes the
category of the forward op that made it (same autograd ``sequence_nr``), e.g. the loss's
log-softmax. The scopes' own self time (Python between ops) goes to "not in any op" for the
step and network scopes, and to the scope's category for the others.

FLOPs of the convolutions come from forward hooks on every ``nn.Conv2d`` (input and output
shapes): forward 2·N·Ho·Wo·Co·Kh·Kw·Ci/groups; backward the weight gradient (as much again)
plus the input gradient (as much again, except for the first layer, whose input needs none).
Writes one JSON object to OUT.json.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
import types
from collections import defaultdict
from typing import Any

import mmdet
import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mmdet_speed_worker import CONFIGS  # noqa: E402

# The category names shared with scripts/profile_train_step.py.
CONV_FWD = {"k×k": "conv k×k fwd", "1×1": "conv 1×1 fwd", "depthwise": "depthwise fwd"}
CONV_BWD = {"k×k": "conv k×k bwd", "1×1": "conv 1×1 bwd", "depthwise": "depthwise bwd"}
BN_FWD, BN_BWD = "BatchNorm fwd", "BatchNorm bwd"
ACT = "activation fwd+bwd"
MATCHING = "matching"
LOSS = "loss fwd+bwd"
OPTIMIZER = "optimizer"
OTHER = "other ops"
NOT_IN_OP = "not in any op"
SCOPE = "ssdprof/"

ACT_FORWARD = {"aten::relu", "aten::relu_", "aten::hardtanh", "aten::hardtanh_", "aten::relu6"}
ACT_BACKWARD = ("ReluBackward", "HardtanhBackward", "ThresholdBackward")


def conv_kind(input_shape: list[int], weight_shape: list[int]) -> str:
    """'depthwise', '1×1' or 'k×k' for an NCHW input and an OIHW weight."""
    c_in, c_per_group = input_shape[1], weight_shape[1]
    groups = c_in // max(c_per_group, 1)
    if groups > 1 and groups == c_in:
        return "depthwise"
    if weight_shape[2] * weight_shape[3] == 1:
        return "1×1"
    return "k×k"


def build(name: str, batch: int) -> tuple[Any, Any, list, torch.optim.Optimizer]:
    """mmdetection's model of ``name`` (random weights), a batch of images, its samples, SGD."""
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(root, CONFIGS[name]))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
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
    return model, x, samples, sgd


def add_scopes(model: Any) -> None:
    """Wrap mmdetection's network forward and head methods in ``record_function`` scopes."""

    def scoped(fn: Any, scope: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with record_function(SCOPE + scope):
                return fn(*args, **kwargs)

        return wrapper

    head = model.bbox_head
    model.extract_feat = scoped(model.extract_feat, "network")
    head.forward = scoped(head.forward, "network")
    head.get_anchors = scoped(head.get_anchors, MATCHING)
    head.get_targets = scoped(head.get_targets, MATCHING)
    head.loss_by_feat = scoped(head.loss_by_feat, LOSS)


def conv_flops(model: Any, step: Any) -> tuple[dict[tuple, tuple[float, float]], dict[str, float]]:
    """(input shape, weight shape) → (forward FLOPs, backward FLOPs) of every ``nn.Conv2d``,
    and the FLOPs of one step per convolution category, from forward hooks during one
    ``step()``. The totals are the figures reported: two layers can share input and weight
    shapes with different strides, so the per-shape table only tells the kind apart."""
    out: dict[tuple, tuple[float, float]] = {}
    totals: dict[str, float] = defaultdict(float)

    def hook(module: torch.nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        n, co, ho, wo = output.shape
        kh, kw = module.kernel_size
        fwd = 2.0 * n * ho * wo * co * kh * kw * (module.in_channels // module.groups)
        bwd = fwd * (2 if x.requires_grad else 1)  # weight gradient (+ input gradient)
        out[(tuple(x.shape), tuple(module.weight.shape))] = (fwd, bwd)
        kind = conv_kind(list(x.shape), list(module.weight.shape))
        totals[CONV_FWD[kind]] += fwd
        totals[CONV_BWD[kind]] += bwd

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    step()
    for h in handles:
        h.remove()
    return out, dict(totals)


class Classifier:
    """Self time of every profiler event → a category (see the module docstring)."""

    def __init__(self, flops: dict[tuple, tuple[float, float]]):
        self.flops = flops
        self.ms: dict[str, float] = defaultdict(float)
        self.gflop: dict[str, float] = defaultdict(float)
        self.forward_category: dict[int, str] = {}
        self.unknown_shapes = 0

    def own(self, e: Any, inherited: str | None) -> tuple[str | None, bool]:
        """(category of event ``e`` or None to inherit, whether it is final for its subtree)."""
        name = e.name
        if name in ("aten::conv2d", "aten::convolution"):
            shapes = e.input_shapes
            kind = conv_kind(shapes[0], shapes[1])
            fwd, _ = self.flops.get((tuple(shapes[0]), tuple(shapes[1])), (0.0, 0.0))
            self.unknown_shapes += (tuple(shapes[0]), tuple(shapes[1])) not in self.flops
            self.gflop[CONV_FWD[kind]] += fwd / 1e9
            return CONV_FWD[kind], True
        if name.startswith("autograd::engine::evaluate_function: "):
            node = name.split(": ", 1)[1]
            if node.startswith("ConvolutionBackward"):
                conv = find(e, "aten::convolution_backward")
                if conv is None:
                    return CONV_BWD["k×k"], True
                shapes = conv.input_shapes
                kind = conv_kind(shapes[1], shapes[2])
                key = (tuple(shapes[1]), tuple(shapes[2]))
                self.unknown_shapes += key not in self.flops
                self.gflop[CONV_BWD[kind]] += self.flops.get(key, (0.0, 0.0))[1] / 1e9
                return CONV_BWD[kind], True
            if "BatchNormBackward" in node:
                return BN_BWD, True
            if node.startswith(ACT_BACKWARD):
                return ACT, True
            if "AccumulateGrad" in node:
                return OTHER, True
            seqs = [e.sequence_nr] + [c.sequence_nr for c in e.cpu_children]
            seq = next((s for s in seqs if s is not None and s >= 0), -1)
            return self.forward_category.get(seq, OTHER), True
        if "batch_norm" in name:
            return BN_FWD, True
        if name in ACT_FORWARD:
            return ACT, True
        if name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            return OPTIMIZER, True
        if name.startswith(SCOPE):
            scope = name[len(SCOPE) :]
            return (scope if scope in (MATCHING, LOSS, OPTIMIZER) else None), False
        return None, False

    def visit(self, e: Any, inherited: str | None, final: bool) -> None:
        """Add ``e``'s self time (and its subtree's) to the categories."""
        cat = inherited
        if not final:
            own, final = self.own(e, inherited)
            cat = own or inherited
        if e.name.startswith(SCOPE) and e.name[len(SCOPE) :] in ("step", "network", "backward"):
            self.ms[NOT_IN_OP] += e.self_cpu_time_total / 1e3
        else:
            self.ms[cat or OTHER] += e.self_cpu_time_total / 1e3
        if getattr(e, "sequence_nr", -1) >= 0 and cat and "evaluate_function" not in e.name:
            self.forward_category.setdefault(e.sequence_nr, cat)
        for child in sorted(e.cpu_children, key=lambda c: c.time_range.start):
            self.visit(child, cat, final)


def find(e: Any, name: str) -> Any:
    """The first event called ``name`` in ``e``'s subtree (depth first), or None."""
    for child in e.cpu_children:
        if child.name == name:
            return child
        hit = find(child, name)
        if hit is not None:
            return hit
    return None


def main() -> int:
    name, batch, steps, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    model, x, samples, sgd = build(name, batch)
    add_scopes(model)

    def step() -> None:
        with record_function(SCOPE + "step"):
            model.train()
            sgd.zero_grad()
            losses = model.loss(x, samples)
            with record_function(SCOPE + LOSS):
                total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
            with record_function(SCOPE + "backward"):
                total.backward()
            with record_function(SCOPE + OPTIMIZER):
                sgd.step()

    flops, flop_totals = conv_flops(model, step)
    step()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    prof_walls = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            prof_walls.append(time.perf_counter() - t0)
    events = prof.events()
    classifier = Classifier(flops)
    # forward events first, so that backward nodes find their forward op's category
    roots = sorted((e for e in events if e.cpu_parent is None), key=lambda e: e.time_range.start)
    for e in roots:
        classifier.visit(e, None, False)
    step_events = [e for e in events if e.name == SCOPE + "step"]
    report = {
        "step_wall_ms_median": statistics.median(walls) * 1e3,
        "step_walls_ms": [w * 1e3 for w in walls],
        "profiled_step_wall_ms_mean": statistics.mean(prof_walls) * 1e3,
        "profiled_step_event_ms_mean": statistics.mean(e.cpu_time_total for e in step_events) / 1e3,
        "steps": steps,
        "ms_per_step": {k: v / steps for k, v in classifier.ms.items()},
        "gflop_per_step": {k: v / 1e9 for k, v in flop_totals.items()},
        "gflop_per_step_by_event_shapes": {k: v / steps for k, v in classifier.gflop.items()},
        "conv_layers": len(flops),
        "conv_events_without_hook_shapes": classifier.unknown_shapes,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
    return 0


def versions() -> dict[str, str | None]:
    """torch's, mmdetection's, mmcv's and mmengine's versions."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for package in ("torch", "mmdet", "mmcv", "mmengine", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
