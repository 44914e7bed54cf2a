"""Where the float32 CPU train step spends its time, ssd_jax beside mmdetection, per op category.

    PYTHONPATH=. .venv/bin/python scripts/profile_train_step.py \\
        [--configs ssdlite_mobilenetv2_320_coco,ssd300_coco] [--batch 8] [--steps 3] \\
        [--mmdet-python /tmp/mmdet_ref/venv/bin/python] [--out-dir docs/benchmarks]

For each config, at batch 8, float32, random weights, random images with 8 random boxes each
(``scripts/compare_speed.py``'s train step on both sides):

ssd_jax: the pmapped train step of ``ssd_jax.training.step.make_p_train_step`` is compiled
once (``lower(...).compile()``), run twice to warm up, timed ``--steps`` times, then run
``--steps`` times under ``jax.profiler.trace``. The ``.xplane.pb`` is read with
``jax.profiler.ProfileData``: every executed thunk carries an ``hlo_op`` stat, the name of an
instruction of the compiled module's text. Each instruction (and, for a fusion, everything it
calls) is put in a category from its HLO metadata ``op_name``:

* backward: the op_name holds ``transpose(`` (``transpose(jvp(...))``, the VJP of the loss);
* the Flax module path in the op_name names the layer: ``DepthwiseConv`` modules (depthwise,
  which ssd_jax computes as k² shifted multiply-adds: elementwise fusions, no convolution op),
  ``bn`` (BatchNorm); a ``convolution`` or ``dot`` instruction is a k×k or 1×1 convolution
  (its module: ``nn.Conv`` or ``PointwiseConv``);
* ``jax.named_scope`` scopes this script adds around ssd_jax functions without changing them
  (the HLO is the same; only metadata differs): ``PROF_matching`` around
  ``assigner.build_targets`` (as ``objective.ssd_loss`` calls it), ``PROF_loss`` around
  ``losses.flatten_levels``, ``losses.multibox_loss`` and ``objective.group_positives``,
  ``PROF_optimizer`` around the optax ``update``, ``PROF_act`` around ReLU/ReLU6,
  ``PROF_normalize`` around the input normalisation; ops of the step outside the loss's
  ``jvp``/``transpose`` (``apply_updates``, the finiteness check, the state update) count as
  optimizer.

A fusion holding convolutions or products is split between them in proportion to their FLOPs
(fused bias, ReLU or BatchNorm work is counted with the convolution); other fusions go to the
first category present among depthwise, BatchNorm, matching, loss, optimizer, activation, other
(the ms of fusions that held more than one category is reported). Time is attributed on the
profile's timeline, so nested or overlapping events are not counted twice. Eigen convolution
thunks (``convolution`` instructions outside YNNPACK fusions) are asynchronous: their event
covers the dispatch only, so the idle time between the end of such an event and the next op's
start is given to that convolution (an estimate: ops that ran meanwhile keep their own time).

FLOPs: of every ``convolution`` (2·|out|·window·C_in-per-group, from its HLO shapes; backward
weight-gradient and input-gradient convolutions alike) and ``dot`` (2·|out|·contracted size);
for the depthwise layers 2·N·Ho·Wo·C·k² forward and twice that backward (weight and input
gradients), from the layers' shapes.

mmdetection: ``scripts/mmdet_profile_worker.py`` in mmdetection's environment (``torch.profiler``
on its own train step, the same categories; see its docstring).

The JSON (``OUT_DIR/profile_train_step_<date>_<config>.json``) holds both sides per category (ms
per step, share of the step, GFLOP and GFLOP/s), the step wall times (unprofiled median and
under the profiler), the CPU model (lscpu), versions, the commit and what could not be
separated. The table is printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# ssd_jax sets its XLA CPU flags on import, before JAX's first computation
from ssd_jax import losses, objective, provenance
from ssd_jax.config import load_config
from ssd_jax.models import layers
from ssd_jax.training import step as step_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MMDET_PYTHON = "/tmp/mmdet_ref/venv/bin/python"

CATEGORIES = (
    "conv k×k fwd",
    "conv 1×1 fwd",
    "depthwise fwd",
    "conv k×k bwd",
    "conv 1×1 bwd",
    "depthwise bwd",
    "BatchNorm fwd",
    "BatchNorm bwd",
    "activation fwd+bwd",
    "matching",
    "loss fwd+bwd",
    "optimizer",
    "other ops",
    "not in any op",
)
CONV_CATEGORIES = CATEGORIES[:6]
DESCRIPTIONS = {
    "conv k×k fwd": "dense k×k convolutions (ssd_jax: nn.Conv; mmdetection: aten::convolution)",
    "conv 1×1 fwd": "1×1 convolutions (ssd_jax: PointwiseConv, a dot)",
    "depthwise fwd": "depthwise 3×3 (ssd_jax: DepthwiseConv, shifted multiply-adds)",
    "conv k×k bwd": "their weight (and input) gradients",
    "conv 1×1 bwd": "their weight and input gradients (ssd_jax: dots)",
    "depthwise bwd": "their weight and input gradients",
    "BatchNorm fwd": "train-mode BatchNorm; ssd_jax: with whatever XLA fused into it",
    "BatchNorm bwd": "its backward",
    "activation fwd+bwd": "ReLU/ReLU6 and backward where not fused into another category",
    "matching": "anchors (mmdetection only), MaxIoUAssigner, sampler, box encoding",
    "loss fwd+bwd": "head outputs flattened, cross-entropy, hard negatives, smooth L1, backward",
    "optimizer": "SGD with momentum and weight decay (ssd_jax: also the finiteness check)",
    "other ops": "copies, pads, transposes, input normalisation, autograd grad accumulation",
    "not in any op": "step wall time outside every op (dispatch, Python, idle waits)",
}
SCOPES = {
    "PROF_matching": "matching",
    "PROF_loss": "loss fwd+bwd",
    "PROF_optimizer": "optimizer",
}
# a fusion without convolutions goes to the first of these that its instructions belong to
PRIORITY = (
    "depthwise",
    "BatchNorm",
    "matching",
    "loss fwd+bwd",
    "optimizer",
    "activation fwd+bwd",
    "other ops",
)
TRIVIAL = {
    "parameter",
    "constant",
    "bitcast",
    "tuple",
    "get-tuple-element",
    "broadcast",
    "iota",
    "reshape",
}
CONTAINERS = {"while", "conditional", "call"}


def log(*args: Any) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------- HLO parsing


@dataclasses.dataclass
class Instr:
    """One HLO instruction of the compiled module's text."""

    name: str
    opcode: str
    shape: str
    operand_shapes: list[list[int]]
    attrs: str
    op_name: str
    calls: list[str]


_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_SHAPE = re.compile(r"\b[a-z]+[0-9]*\[([0-9,]*)\]")


def _split_balanced(text: str) -> tuple[str, str]:
    """``'(a(b)c) rest'`` → ``('(a(b)c)', ' rest')``."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return text[: i + 1], text[i + 1 :]
    return text, ""


def parse_hlo(text: str) -> tuple[dict[str, Instr], dict[str, list[str]]]:
    """{instruction name: Instr}, {computation name: [instruction names]}."""
    instrs: dict[str, Instr] = {}
    comps: dict[str, list[str]] = collections.defaultdict(list)
    operand_names: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m and cur is not None:
            name, rest = m.groups()
            if rest.startswith("("):  # tuple shape
                shape, rest2 = _split_balanced(rest)
                rest2 = rest2.lstrip()
            else:
                shape, _, rest2 = rest.partition(" ")
            opcode, _, after = rest2.partition("(")
            operands, attrs = _split_balanced("(" + after)
            calls = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", attrs)
            calls += [
                c.strip().lstrip("%")
                for grp in re.findall(r"(?:calls|branch_computations)=\{([^}]*)\}", attrs)
                for c in grp.split(",")
            ]
            op_name = re.search(r'op_name="([^"]*)"', attrs)
            instrs[name] = Instr(
                name,
                opcode,
                shape,
                [[int(d) for d in s.split(",") if d] for s in _SHAPE.findall(operands)],
                attrs,
                op_name.group(1) if op_name else "",
                calls,
            )
            operand_names[name] = re.findall(r"%?([\w.\-]+)\s*(?:,|\)$)", operands)
            comps[cur].append(name)
            continue
        m = _COMP.match(line)
        if m:
            cur = m.group(1)
    for name, ins in instrs.items():  # operand shapes not printed inline: from the operands
        if not ins.operand_shapes:
            ins.operand_shapes = [dims(instrs[n].shape) for n in operand_names[name] if n in instrs]
    return instrs, comps


def dims(shape: str) -> list[int]:
    """``'f32[8,40,40,96]{3,2,1,0}'`` → ``[8, 40, 40, 96]`` (``[]`` for a tuple)."""
    m = _SHAPE.match(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def flops_of(ins: Instr) -> float:
    """FLOPs of a ``convolution`` or ``dot`` instruction (0 for anything else)."""
    out = math.prod(dims(ins.shape))
    if ins.opcode == "convolution":
        window = re.search(r"window=\{size=([0-9x]+)", ins.attrs)
        win = math.prod(int(v) for v in window.group(1).split("x")) if window else 1
        labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
        rhs = ins.operand_shapes[1]
        rhs_in = rhs[labels.group(2).index("i")] if labels else 1
        return 2.0 * out * win * rhs_in
    if ins.opcode == "dot":
        lhs = ins.operand_shapes[0]
        contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
        k = (
            math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
            if contracting
            else 1
        )
        return 2.0 * out * k
    return 0.0


def inner(name: str, instrs: dict[str, Instr], comps: dict[str, list[str]]) -> list[Instr]:
    """The instruction and every instruction of the computations it calls, recursively."""
    out, todo, seen = [], [name], set()
    while todo:
        n = todo.pop()
        if n in seen or n not in instrs:
            continue
        seen.add(n)
        out.append(instrs[n])
        for c in instrs[n].calls:
            todo.extend(comps.get(c, []))
    return out


# ----------------------------------------------------------------------------- categories


@dataclasses.dataclass
class ModelInfo:
    """The model's convolution modules: path → kind ('k×k', '1×1', 'depthwise'), and the
    depthwise layers' forward FLOPs."""

    conv_paths: dict[str, str]
    depthwise_fwd_flops: float


def model_info(model: nn.Module, variables: dict, x: jax.Array) -> ModelInfo:
    """Which module paths are k×k, 1×1 or depthwise convolutions (``nn.intercept_methods``
    over an abstract forward), and the depthwise layers' FLOPs."""
    paths: dict[str, str] = {}
    flops = [0.0]

    def intercept(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__":
            path = "/".join(module.path)
            if isinstance(module, layers.DepthwiseConv):
                paths[path] = "depthwise"
                n, h, w, c = args[0].shape
                k, s, p = module.kernel_size, module.stride, module.padding
                ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
                flops[0] += 2.0 * n * ho * wo * c * k * k
            elif isinstance(module, layers.PointwiseConv):
                paths[path] = "1×1"
            elif isinstance(module, (nn.Conv, layers.RowProductConv, layers.TapProductConv)):
                paths[path] = "k×k"
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    return ModelInfo(paths, flops[0])


class Categorizer:
    """Category of HLO instructions and executed ops, from their metadata (module docstring)."""

    def __init__(self, instrs: dict[str, Instr], comps: dict[str, list[str]], info: ModelInfo):
        self.instrs, self.comps, self.info = instrs, comps, info
        # longest paths first, so that a module's path wins over its parents'
        self.paths = sorted(info.conv_paths, key=len, reverse=True)
        self._split: dict[str, tuple[dict[str, float], dict[str, float], bool]] = {}

    def module_kind(self, op_name: str) -> str | None:
        """'k×k', '1×1' or 'depthwise' when ``op_name`` lies inside a convolution module."""
        for path in self.paths:
            if f"/{path}/" in op_name:
                return self.info.conv_paths[path]
        return None

    @staticmethod
    def phase(op_name: str) -> str:
        return "bwd" if "transpose(" in op_name else "fwd"

    def heavy_phase(self, ins: Instr) -> str:
        """A convolution's or product's phase; XLA-made ones without metadata (e.g. the weight
        gradient of the first convolution, ``convolution-window-dilated``) are gradients when
        their window is larger than any kernel."""
        if ins.op_name:
            return self.phase(ins.op_name)
        window = re.search(r"window=\{size=([0-9x]+)", ins.attrs)
        big = window and math.prod(int(v) for v in window.group(1).split("x")) > 49
        return "bwd" if big else "fwd"

    def of_instruction(self, ins: Instr) -> str:
        """A non-convolution instruction's category (before the fwd/bwd suffix for the model's
        layers: 'depthwise', 'BatchNorm')."""
        on = ins.op_name
        for scope, cat in SCOPES.items():
            if scope in on:
                return cat
        if self.module_kind(on) == "depthwise":
            return "depthwise"
        if "/bn/" in on:
            return "BatchNorm"
        if "PROF_act" in on:
            return "activation fwd+bwd"
        if "PROF_normalize" in on:
            return "other ops"
        if "/" in on and "jvp(" not in on and "transpose(" not in on:
            return "optimizer"  # apply_updates, the finiteness check, the state update
        return "other ops"

    def with_phase(self, cat: str, op_names: list[str]) -> str:
        if cat in ("depthwise", "BatchNorm"):
            bwd = sum(self.phase(o) == "bwd" for o in op_names)
            return f"{cat} {'bwd' if bwd * 2 > len(op_names) else 'fwd'}"
        return cat

    def split(self, op: str) -> tuple[dict[str, float], dict[str, float], bool]:
        """For an executed op: {category: fraction of its time}, {category: FLOPs}, and
        whether its instructions belonged to more than one category (a mixed fusion)."""
        if op not in self._split:
            self._split[op] = self._compute_split(op)
        return self._split[op]

    def _compute_split(self, op: str) -> tuple[dict[str, float], dict[str, float], bool]:
        body = inner(op, self.instrs, self.comps)
        heavy = [i for i in body if i.opcode in ("convolution", "dot")]
        heavy_names = {i.name for i in heavy}
        if heavy:
            flops: dict[str, float] = collections.defaultdict(float)
            for h in heavy:
                kind = self.module_kind(h.op_name)
                if kind is None:
                    kind = "1×1" if h.opcode == "dot" else "k×k"
                flops[
                    f"{'conv ' + kind if kind != 'depthwise' else kind} {self.heavy_phase(h)}"
                ] += flops_of(h)
            total = sum(flops.values()) or 1.0
            mixed = any(
                self.of_instruction(i) != "other ops"
                for i in body
                if i.name not in heavy_names and i.opcode not in TRIVIAL
            )
            return {c: f / total for c, f in flops.items()}, dict(flops), mixed
        cats: dict[str, list[str]] = collections.defaultdict(list)
        for i in body:
            if i.opcode in TRIVIAL and i.name != op:
                continue
            cats[self.of_instruction(i)].append(i.op_name)
        if not cats:
            cats["other ops"] = [self.instrs[op].op_name]
        main = next(c for c in PRIORITY if c in cats)
        return {self.with_phase(main, cats[main]): 1.0}, {}, len(cats) > 1


def is_async(ins: Instr) -> bool:
    """An Eigen convolution (or dot) thunk: its profiler event covers its dispatch only."""
    return ins.opcode in ("convolution", "dot")


# ----------------------------------------------------------------------------- ssd_jax side


@contextlib.contextmanager
def named_scopes(tx: optax.GradientTransformation) -> Iterator[optax.GradientTransformation]:
    """Wraps ssd_jax's target, loss, activation and normalisation functions, and ``tx``'s update,
    in ``jax.named_scope``s (metadata only); restores them on exit."""

    def scoped(fn: Callable, scope: str) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with jax.named_scope(scope):
                return fn(*args, **kwargs)

        return wrapper

    patches = [
        (objective, "build_targets", "PROF_matching"),
        (objective, "group_positives", "PROF_loss"),
        (losses, "flatten_levels", "PROF_loss"),
        (losses, "multibox_loss", "PROF_loss"),
        (step_module, "normalize", "PROF_normalize"),
        (nn, "relu", "PROF_act"),
    ]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
    saved_acts = dict(layers.ACTIVATIONS)
    try:
        for mod, attr, scope in patches:
            setattr(mod, attr, scoped(getattr(mod, attr), scope))
        for key, fn in saved_acts.items():
            if fn is not None:
                layers.ACTIVATIONS[key] = scoped(fn, "PROF_act")
        update = scoped(tx.update, "PROF_optimizer")
        yield optax.GradientTransformation(tx.init, update)
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
        layers.ACTIVATIONS.update(saved_acts)


def jax_batch(config: Any, n: int) -> dict[str, np.ndarray]:
    """``scripts/compare_speed.py``'s batch: random uint8 images, 8 random boxes per image."""
    rng = np.random.default_rng(0)
    s, m = config.input_size, 8
    rng.normal(size=(n, s, s, 3))  # compare_speed's worker draws its inference input
    rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)  # and its detect input first
    xy = rng.uniform(0, s * 0.7, (n, m, 2))
    wh = rng.uniform(s * 0.05, s * 0.3, (n, m, 2))
    return {
        "image": rng.integers(0, 255, (n, s, s, 3), dtype=np.uint8),
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "labels": rng.integers(0, config.model.num_classes, (n, m)).astype(np.int32),
        "valid": np.ones((n, m), bool),
    }


def timeline(
    pb_path: str, instrs: dict[str, Instr]
) -> tuple[dict[str, float], dict[str, float], float, int, dict[str, int]]:
    """Per executed op its time (ns) on the profile's timeline: every instant covered by op
    events is shared among the innermost ones active then; idle time right after an
    asynchronous convolution's event goes to that convolution (second dict). Also the idle
    time within the profiled window (ns), the number of events and events per thread."""
    pd = jax.profiler.ProfileData.from_file(pb_path)
    events: list[tuple[int, int, str]] = []
    threads: collections.Counter = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                op = dict(ev.stats).get("hlo_op")
                if op is None or op not in instrs:
                    continue
                start = int(ev.start_ns)
                events.append((start, start + int(ev.duration_ns), op))
                threads[f"{plane.name}/{line.name}"] += 1
    points = sorted(
        [(s, 1, i) for i, (s, _, _) in enumerate(events)]
        + [(e, 0, i) for i, (_, e, _) in enumerate(events)]
    )
    own: dict[str, float] = collections.defaultdict(float)
    async_gap: dict[str, float] = collections.defaultdict(float)
    idle, active, prev, last_ended = 0.0, set(), None, None
    for t, is_start, i in points:
        if prev is not None and t > prev:
            dt = t - prev
            leaves = [j for j in active if instrs[events[j][2]].opcode not in CONTAINERS]
            leaves = leaves or list(active)
            if leaves:
                for j in leaves:
                    own[events[j][2]] += dt / len(leaves)
            elif last_ended is not None and is_async(instrs[events[last_ended][2]]):
                async_gap[events[last_ended][2]] += dt
            else:
                idle += dt
        if is_start:
            active.add(i)
        else:
            active.discard(i)
            last_ended = i
        prev = t
    return dict(own), dict(async_gap), idle, len(events), dict(threads)


def profile_jax(name: str, batch: int, steps: int) -> dict[str, Any]:
    """ssd_jax's side: ms, share and GFLOP per category per step, and details."""
    from ssd_jax import Detector
    from ssd_jax.parallel import replicate, shard_batch
    from ssd_jax.training import optim
    from ssd_jax.training.state import create_train_state

    t0 = time.time()
    config = load_config(os.path.join(ROOT, "configs", f"{name}.py"), [])
    config.precision = "fp32"
    det = Detector(config)
    devices = jax.local_device_count()
    config.train.per_gpu_batch = objective.fitting_per_gpu_batch(
        int(config.train.get("per_gpu_batch", 0)), batch, devices
    )
    tx = optim.sgd(config, optim.lr_schedule(config, batch, 1000))
    batch_arrays = shard_batch(jax_batch(config, batch), devices)
    state = replicate(create_train_state(det.variables, tx, 0))
    x = jax.ShapeDtypeStruct((batch, config.input_size, config.input_size, 3), jnp.float32)
    info = model_info(det.model, det.variables, x)
    with named_scopes(tx) as scoped_tx:
        p_step = step_module.make_p_train_step(config, scoped_tx, det.flat_anchors, batch)
        compiled = p_step.lower(state, batch_arrays).compile()
    text = compiled.as_text()
    trace_dir = tempfile.mkdtemp(prefix="jaxprof_train_")
    with open(os.path.join(trace_dir, "train_step.hlo.txt"), "w") as f:
        f.write(text)
    instrs, comps = parse_hlo(text)
    cat = Categorizer(instrs, comps, info)
    compile_s = time.time() - t0

    def run(state: Any) -> Any:
        state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready(metrics)
        return state

    for _ in range(2):
        state = run(state)
    walls = []
    for _ in range(steps):
        t = time.perf_counter()
        state = run(state)
        walls.append(time.perf_counter() - t)
    log(
        f"  ssd_jax: built and compiled in {compile_s:.0f} s; step {statistics.median(walls):.3f} s"
    )
    log(f"  profile and compiled HLO under {trace_dir}")
    prof_walls = []
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            t = time.perf_counter()
            state = run(state)
            prof_walls.append(time.perf_counter() - t)
    pb = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    own, async_gap, idle, n_events, threads = timeline(pb[0], instrs)

    ms: dict[str, float] = collections.defaultdict(float)
    gflop: dict[str, float] = collections.defaultdict(float)
    mixed_ms: dict[str, float] = collections.defaultdict(float)
    per_op = []
    for op in set(own) | set(async_gap):
        t_ms = (own.get(op, 0.0) + async_gap.get(op, 0.0)) / 1e6 / steps
        shares, flops, mixed = cat.split(op)
        for c, f in shares.items():
            ms[c] += t_ms * f
            if mixed:
                mixed_ms[c] += t_ms * f
        per_op.append(
            {
                "op": op,
                "ms": t_ms,
                "async_gap_ms": async_gap.get(op, 0.0) / 1e6 / steps,
                "categories": shares,
                "shape": instrs[op].shape[:60],
                "op_name": instrs[op].op_name[-120:],
            }
        )
    # XLA names a fusion after its root: copy/transpose fusions change a tensor's layout
    layout_ms: dict[str, float] = collections.defaultdict(float)
    for r in per_op:
        if r["op"].startswith(("copy", "transpose")):
            for c, f in r["categories"].items():
                layout_ms[c] += r["ms"] * f
    # FLOPs of every convolution/dot of the module, executed once per step
    executed = {i.name for op in own for i in inner(op, instrs, comps)}
    for op in set(own) | set(async_gap):
        _, flops, _ = cat.split(op)
        for c, f in flops.items():
            gflop[c] += f / 1e9
    gflop["depthwise fwd"] += info.depthwise_fwd_flops / 1e9
    gflop["depthwise bwd"] += 2 * info.depthwise_fwd_flops / 1e9
    wall_prof = statistics.mean(prof_walls) * 1e3
    ms["not in any op"] = max(wall_prof - sum(ms.values()), 0.0)
    per_op.sort(key=lambda r: -r["ms"])
    return {
        "step_wall_ms_median": statistics.median(walls) * 1e3,
        "step_walls_ms": [w * 1e3 for w in walls],
        "profiled_step_wall_ms_mean": wall_prof,
        "steps": steps,
        "ms_per_step": dict(ms),
        "gflop_per_step": dict(gflop),
        "ms_in_mixed_fusions": dict(mixed_ms),
        "ms_in_layout_copy_fusions": dict(layout_ms),
        "async_conv_gap_ms_per_step": sum(async_gap.values()) / 1e6 / steps,
        "idle_in_window_ms_per_step": idle / 1e6 / steps,
        "op_events": n_events,
        "op_events_per_thread": threads,
        "executed_instructions": len(executed),
        "compile_s": compile_s,
        "per_gpu_batch": int(config.train.per_gpu_batch),
        "top_ops": per_op[:60],  # the convolutions fill the first ~25
    }


# ----------------------------------------------------------------------------- mmdetection


def profile_mmdet(python: str, name: str, batch: int, steps: int) -> dict[str, Any]:
    """mmdetection's side, from ``scripts/mmdet_profile_worker.py`` in its environment."""
    out = os.path.join(tempfile.mkdtemp(prefix="mmdetprof_"), "profile.json")
    worker = os.path.join(ROOT, "scripts", "mmdet_profile_worker.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    subprocess.run([python, worker, name, str(batch), str(steps), out], check=True, env=env)
    with open(out) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- report


def side_rows(side: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per category: ms per step, share of the profiled step, GFLOP per step and GFLOP/s."""
    wall = side["profiled_step_wall_ms_mean"]
    scale = side["step_wall_ms_median"] / wall  # the profiler's own overhead taken out
    rows = {}
    for c in CATEGORIES:
        ms = side["ms_per_step"].get(c, 0.0)
        gflop = side["gflop_per_step"].get(c) if c in CONV_CATEGORIES else None
        rows[c] = {
            "ms": ms,
            "ms_scaled_to_unprofiled_step": ms * scale,
            "share": ms / wall,
            "gflop": gflop,
            "gflop_per_s": gflop / ms * 1e3 if gflop and ms > 0 else None,
        }
    return rows


def print_table(report: dict[str, Any]) -> None:
    theirs = report.get("mmdetection_details")
    log(
        f"\n{report['config']}, batch {report['batch']}, fp32, {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores, {report['date']}"
    )
    step = report["step_wall_ms"]
    log(
        "step wall ms (unprofiled median / under the profiler): "
        f"ssd_jax {step['ssd_jax']['unprofiled_median']:.0f} / "
        f"{step['ssd_jax']['profiled_mean']:.0f}"
        + (
            f", mmdetection {step['mmdetection']['unprofiled_median']:.0f} / "
            f"{step['mmdetection']['profiled_mean']:.0f}"
            if theirs
            else ""
        )
    )
    head = f"{'category':20} {'ssd_jax ms':>10} {'share':>6} {'GFLOP/s':>8}"
    if theirs:
        head += f" | {'mmdet ms':>9} {'share':>6} {'GFLOP/s':>8} | {'ours/mmdet':>10} {'scaled':>7}"
    log(head)

    def fmt(v: float | None) -> str:
        return f"{v:8.1f}" if v is not None else f"{'':8}"

    for row in report["categories"]:
        a = row["ssd_jax"]
        line = f"{row['category']:20} {a['ms']:10.1f} {a['share']:6.1%} {fmt(a['gflop_per_s'])}"
        if theirs:
            b = row["mmdetection"]
            ratio = f"{row['ratio_ms']:9.2f}×" if row["ratio_ms"] is not None else ""
            scaled = f"{row['ratio_ms_scaled']:6.2f}×" if row["ratio_ms_scaled"] is not None else ""
            line += (
                f" | {b['ms']:9.1f} {b['share']:6.1%} {fmt(b['gflop_per_s'])} | {ratio:>10} "
                f"{scaled:>7}"
            )
        log(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="ssdlite_mobilenetv2_320_coco")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed and profiled steps, each")
    parser.add_argument("--mmdet-python", default=DEFAULT_MMDET_PYTHON)
    parser.add_argument("--skip-mmdet", action="store_true")
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    args = parser.parse_args(argv)
    for name in args.configs.split(","):
        log(f"=== {name}, batch {args.batch}, fp32; load {os.getloadavg()}")
        ours = profile_jax(name, args.batch, args.steps)
        theirs = None
        if not args.skip_mmdet:
            log(f"  mmdetection ({args.mmdet_python}); load {os.getloadavg()}")
            theirs = profile_mmdet(args.mmdet_python, name, args.batch, args.steps)
        rows_a = side_rows(ours)
        rows_b = side_rows(theirs) if theirs else None
        categories = []
        for c in CATEGORIES:
            row: dict[str, Any] = {"category": c, "what": DESCRIPTIONS[c], "ssd_jax": rows_a[c]}
            if rows_b:
                row["mmdetection"] = rows_b[c]
                b = rows_b[c]["ms"]
                row["ratio_ms"] = rows_a[c]["ms"] / b if b > 0.05 else None
                b_scaled = rows_b[c]["ms_scaled_to_unprofiled_step"]
                row["ratio_ms_scaled"] = (
                    rows_a[c]["ms_scaled_to_unprofiled_step"] / b_scaled if b > 0.05 else None
                )
            categories.append(row)
        date = time.strftime("%Y-%m-%d")
        versions = provenance.versions()
        if theirs:  # mmdetection's environment: its own packages, numpy and python apart
            versions.update(
                {
                    f"{k} (mmdetection env)" if k in versions else k: v
                    for k, v in theirs.pop("versions").items()
                }
            )
        report = {
            "script": "scripts/profile_train_step.py",
            "worker": "scripts/mmdet_profile_worker.py",
            "argv": sys.argv[1:] if argv is None else list(argv),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "config": name,
            "batch": args.batch,
            "precision": "fp32",
            "machine": provenance.machine() | {"load_avg_at_end": os.getloadavg()},
            "commit": provenance.git_commit(ROOT),
            "versions": versions,
            "step_wall_ms": {
                side: {
                    "unprofiled_median": r["step_wall_ms_median"],
                    "profiled_mean": r["profiled_step_wall_ms_mean"],
                }
                for side, r in (("ssd_jax", ours), ("mmdetection", theirs))
                if r
            },
            "categories": categories,
            "not_separated": NOT_SEPARATED,
            "ssd_jax_details": {k: v for k, v in ours.items() if k not in ("ms_per_step",)},
            "mmdetection_details": theirs,
        }
        print_table(report)
        os.makedirs(args.out_dir, exist_ok=True)
        path = os.path.join(args.out_dir, f"profile_train_step_{date}_{name}.json")
        with open(path, "w") as f:
            f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


NOT_SEPARATED = [
    "ssd_jax: XLA fuses the bias add, ReLU/ReLU6 and sometimes BatchNorm's scale into the "
    "convolutions' YNNPACK fusions; that time counts as convolution (split among a fusion's "
    "convolutions by FLOPs). Elementwise fusions holding several categories go to the first of "
    "depthwise, BatchNorm, matching, loss, optimizer, activation (ms_in_mixed_fusions).",
    "ssd_jax: Eigen convolution thunks are asynchronous; their time is estimated as the idle "
    "time after their dispatch event (async_conv_gap_ms_per_step), and work that XLA ran "
    "concurrently meanwhile keeps its own time, so the k×k convolutions' ms is a lower bound.",
    "ssd_jax: idle time on the timeline that follows no asynchronous convolution directly "
    "(idle_in_window_ms_per_step) is in 'not in any op': dispatch gaps between thunks, and, "
    "where Eigen convolutions overlap other ops (SSD300's backward), time spent waiting on them.",
    "ssd_jax: the optimizer row also holds the finiteness check and the state update; the "
    "input normalisation (uint8 → float) is in other ops, which mmdetection's step (float "
    "input) does not have.",
    "mmdetection: torch.profiler (record_shapes) makes its step slower (profiled_mean against "
    "unprofiled_median in step_wall_ms); ms_scaled_to_unprofiled_step and ratio_ms_scaled scale "
    "every category of a side by that side's unprofiled/profiled wall time, which assumes the "
    "overhead is spread in proportion (it falls mostly on small ops).",
    "ssd_jax: XLA inserts layout-changing copies (e.g. [N,H,W,C] → [C, N·H·W] for the 1×1 "
    "weight gradients' products) and fuses BatchNorm's backward into them; that time counts "
    "as BatchNorm bwd (ms_in_layout_copy_fusions gives it per category).",
    "mmdetection: the activation row holds ReLU/ReLU6 and their backward; in ssd_jax they are "
    "mostly fused into BatchNorm or convolution ops. Compare BatchNorm + activation together.",
    "mmdetection: 'matching' includes anchor generation (get_anchors), which ssd_jax does once "
    "outside the step; the per-image Python of mmdetection's assigner counts as matching.",
]


if __name__ == "__main__":
    sys.exit(main())
