"""Where ssd_jax's float32 CPU forward spends its time, beside ONNX Runtime, per layer type.

For SSD300 and SSDLite (batch 8, float32, raw network, no NMS), in one run:

(a) XLA's per-HLO-op time of the whole jitted forward (``Detector.forward``), from a
    ``jax.profiler.trace`` (the ``.xplane.pb`` read with ``jax.profiler.ProfileData``; each
    executed thunk carries an ``hlo_op`` stat), grouped by op kind using the compiled HLO:
    convolution, dot (1×1 convs, ``PointwiseConv``), elementwise fusions from ``DepthwiseConv``
    (shifted multiply-adds), other elementwise fusions, reduce / reduce-window, copy/transpose,
    other. Beside it, ONNX Runtime's per-node profile (``enable_profiling``) of mmdetection's own
    ``torch.onnx`` export (``runs/mmdet_<config>.onnx``, from ``scripts/export_mmdet_onnx.py``)
    grouped the same way (Conv split by weight shape into k×k / 1×1 / depthwise).
    Caveat: HLO ops run with Eigen convolution kernels (``conv_general_dilated.*``) are
    asynchronous and their profiler event covers only the dispatch; their time shows up as the
    gap between the forward's wall time and the sum of HLO op times. YNNPACK fusions
    (``ynn_fusion.*``, where XLA puts chains of convolution/bias/ReLU/pool) are timed in full.
(b) Layer micro-benchmarks, alternating JAX and ORT (warm-up, then median of ROUNDS rounds):
    the JAX form ssd_jax uses (``layers.conv`` → ``nn.Conv`` for k×k, ``PointwiseConv``
    (``jnp.dot``) for 1×1; ``DepthwiseConv`` for depthwise) against a one-node ONNX ``Conv``
    (NCHW, opset 17) in ONNX Runtime (ORT_ENABLE_ALL, default threads). For depthwise layers
    XLA's own grouped convolution (``lax.conv_general_dilated``, ``feature_group_count=C``) is
    timed as a third column.

    PYTHONPATH=. .venv/bin/python scripts/profile_cpu_layers.py [--rounds 5] [--skip-model]
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

if "--ynn-conv" in sys.argv:  # child run: single k×k convolutions by YNNPACK (jaxlib's default)
    os.environ["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import ssd_jax  # noqa: F401  (sets the package's XLA CPU flags before JAX's first computation)
from ssd_jax import Detector
from ssd_jax.config import load_config
from ssd_jax.models.layers import DepthwiseConv, conv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"ssd300_coco": 300, "ssdlite_mobilenetv2_320_coco": 320}
BATCH = 8


def log(*a):
    print(*a, flush=True)


def ort_session(model_or_path, profile_prefix=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_or_path, so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- HLO parsing

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")


def parse_hlo(text):
    """{instruction name: (opcode, result shape, op_name metadata, [called computations])},
    {computation name: [instruction names]}."""
    instrs, comps, cur = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m and cur is not None:
            name, rest = m.groups()
            if rest.startswith("("):  # tuple shape
                depth = 0
                for i, ch in enumerate(rest):  # noqa: B007 (i is used after the loop)
                    depth += ch == "("
                    depth -= ch == ")"
                    if depth == 0:
                        break
                shape, rest2 = rest[: i + 1], rest[i + 2 :]
            else:
                shape, _, rest2 = rest.partition(" ")
            opcode = rest2.split("(", 1)[0]
            calls = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", rest2)
            calls += [
                c.strip().lstrip("%")
                for grp in re.findall(r"calls=\{([^}]*)\}", rest2)
                for c in grp.split(",")
            ]
            op_name = re.search(r'op_name="([^"]*)"', rest2)
            instrs[name] = (opcode, shape, op_name.group(1) if op_name else "", calls)
            comps[cur].append(name)
            continue
        m = _COMP.match(line)
        if m:
            cur = m.group(1)
    return instrs, comps


def inner_ops(name, instrs, comps):
    """'10 convolution, 3 reduce-window' for a fusion calling several heavy ops, else ''."""
    _, _, _, calls = instrs[name]
    c = collections.Counter(instrs[n][0] for cl in calls for n in comps.get(cl, []))
    heavy = {k: v for k, v in c.items() if k in ("convolution", "dot", "reduce-window", "reduce")}
    return ", ".join(f"{v} {k}" for k, v in heavy.items()) if sum(heavy.values()) > 1 else ""


def classify(name, instrs, comps, dw_paths):
    opcode, _, op_name, calls = instrs[name]
    inner = []  # (opcode, op_name) of the instruction and of everything it calls
    todo, seen = [name], set()
    while todo:
        n = todo.pop()
        if n in seen or n not in instrs:
            continue
        seen.add(n)
        oc, _, on, cl = instrs[n]
        inner.append((oc, on))
        for c in cl:
            todo.extend(comps.get(c, []))
    ops = {oc for oc, _ in inner}
    if "convolution" in ops:
        return "convolution (k×k)"
    if "dot" in ops:
        return "dot (1×1 conv)"
    if "reduce-window" in ops:
        return "reduce-window (max pool)"
    if "reduce" in ops:
        return "reduce (L2Norm etc.)"
    if opcode == "fusion":
        if any(any(f"/{p}/" in on for p in dw_paths) for _, on in inner):
            return "elementwise fusion: depthwise conv"
        return "elementwise fusion: other"
    if opcode in ("copy", "transpose"):
        return "copy/transpose"
    return f"other: {opcode}"


def module_of(op_name):
    """The module path part of an op_name ('jit(apply)/SSD/SSD.features/backbone/...')."""
    parts = [p for p in op_name.split("/") if p and not p.startswith("jit(") and p != "SSD"]
    return "/".join(parts[:-1])[:70]


# ----------------------------------------------------------------------------- (a) model


def depthwise_paths(det, x):
    paths = set()

    def icpt(next_fun, args, kwargs, context):
        if isinstance(context.module, DepthwiseConv) and context.method_name == "__call__":
            paths.add("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(icpt):
        jax.eval_shape(functools.partial(det.model.apply, train=False), det.variables, x)
    return paths


def profile_jax_forward(name, size, n_runs):
    t0 = time.time()
    det = Detector(load_config(name))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, size, size, 3), np.float32))
    compiled = det._forward.lower(det.variables, x).compile()
    instrs, comps = parse_hlo(compiled.as_text())
    dw = depthwise_paths(det, x)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    jax.block_until_ready(det.forward(x))
    jax.block_until_ready(det.forward(x))
    log(f"  built + compiled + warm-up in {time.time() - t0:.1f} s; depthwise modules: {len(dw)}")
    walls = []
    d = tempfile.mkdtemp(prefix="jaxprof_")
    with jax.profiler.trace(d):
        for _ in range(n_runs):
            t = time.perf_counter()
            jax.block_until_ready(det.forward(x))
            walls.append(time.perf_counter() - t)
    pb = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    pd = jax.profiler.ProfileData.from_file(pb[0])
    per_op = collections.Counter()
    threads = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                op = stats.get("hlo_op")
                if op is None or op not in instrs:
                    continue
                per_op[op] += ev.duration_ns / 1e6 / n_runs
                threads[line.name] += 1
    return det, x, instrs, comps, dw, per_op, walls, flops, threads


def report_jax(name, instrs, comps, dw, per_op, walls, flops, threads):
    wall = statistics.median(walls) * 1e3
    total = sum(per_op.values())
    log(
        f"  forward wall (under the profiler) {wall:.1f} ms/batch = "
        f"{BATCH / wall * 1e3:.2f} img/s; "
        f"sum of HLO op times {total:.1f} ms ({total / wall:.0%} of wall); "
        f"XLA cost_analysis {flops / 1e9:.1f} GFLOP/batch → {flops / wall / 1e6:.1f} GFLOP/s"
    )
    log(f"  op events on threads: {dict(threads)}")
    kinds = collections.defaultdict(lambda: [0.0, 0])
    for op, ms in per_op.items():
        k = classify(op, instrs, comps, dw)
        kinds[k][0] += ms
        kinds[k][1] += 1
    log(
        "  (a fusion counts as convolution if it holds one, then dot, reduce-window, reduce; "
        "fused bias/ReLU/pool work is counted with it)"
    )
    log(f"  {'JAX/XLA op kind':40s} {'ms/batch':>9s} {'share':>6s} {'#ops':>5s}")
    for k, (ms, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        log(f"  {k:40s} {ms:9.1f} {ms / total:6.1%} {n:5d}")
    log("  top 15 HLO ops:")
    for op, ms in per_op.most_common(15):
        oc, shape, on, _ = instrs[op]
        log(
            f"    {ms:8.1f} ms {ms / total:5.1%}  {classify(op, instrs, comps, dw):32s} "
            f"{op[:28]:28s} {shape[:30]:30s} {module_of(on)}"
            + (
                f"  [fusion of {inner_ops(op, instrs, comps)}]"
                if inner_ops(op, instrs, comps)
                else ""
            )
        )
    return {k: v[0] for k, v in kinds.items()}, total


def ort_kind(args):
    op = args.get("op_name", "?")
    if "Conv" in op:
        shapes = args.get("input_type_shape", [])
        w = None
        if len(shapes) > 1:
            w = list(shapes[1].values())[0]
        if w and len(w) == 4:
            if w[1] == 1 and w[2] * w[3] > 1:
                return "Conv depthwise"
            if w[2] == 1 and w[3] == 1:
                return "Conv 1×1"
            return "Conv k×k"
        return f"{op} (?)"
    return op


def profile_ort(name, size, n_runs):
    path = os.path.join(ROOT, "runs", f"mmdet_{name}.onnx")
    if not os.path.exists(path):
        log(f"  {path} missing: ORT per-node profile not measured")
        return
    prefix = os.path.join(tempfile.mkdtemp(prefix="ortprof_"), "p")
    sess = ort_session(path, prefix)
    xn = np.random.default_rng(0).standard_normal((BATCH, 3, size, size), np.float32)
    iname = sess.get_inputs()[0].name
    sess.run(None, {iname: xn})
    walls = []
    for _ in range(n_runs):
        t = time.perf_counter()
        sess.run(None, {iname: xn})
        walls.append(time.perf_counter() - t)
    prof = sess.end_profiling()
    events = json.load(open(prof))
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[1:]
    kinds = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
            continue
        k = ort_kind(e.get("args", {}))
        kinds[k][0] += e["dur"] / 1e3 / len(runs)
        kinds[k][1] += 1
    total = sum(v[0] for v in kinds.values())
    wall = statistics.median(walls) * 1e3
    log(
        f"  ORT (mmdetection export, profiling on) wall {wall:.1f} ms/batch = "
        f"{BATCH / wall * 1e3:.2f} img/s; sum of node times {total:.1f} ms"
    )
    log(f"  {'ORT node kind':40s} {'ms/batch':>9s} {'share':>6s} {'#nodes':>6s}")
    for k, (ms, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        log(f"  {k:40s} {ms:9.1f} {ms / total:6.1%} {n // max(len(runs), 1):6d}")


# ----------------------------------------------------------------------------- (b) layers


def onnx_conv(n, cin, cout, h, k, s, p, d, g, w, b):
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    node = helper.make_node(
        "Conv",
        ["X", "W", "B"],
        ["Y"],
        kernel_shape=[k, k],
        strides=[s, s],
        pads=[p] * 4,
        dilations=[d, d],
        group=g,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, cin, h, h])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, cout, ho, ho])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return ort_session(model.SerializeToString())


def timed(fn, reps):
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_layer(label, n, h, cin, cout, k, s=1, p=0, d=1, depthwise=False, rounds=5):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((n, h, h, cin), np.float32))
    if depthwise:
        mod = DepthwiseConv(k, s, p)
    else:
        mod = conv(cout, k, s, p, dilation=d)
    variables = jax.jit(mod.init)(jax.random.key(0), x[:1])
    kernel = np.asarray(variables["params"]["kernel"])
    bias = rng.standard_normal(cout, np.float32) * 0.1
    variables = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    f = jax.jit(mod.apply)
    y = np.asarray(f(variables, x))
    form = type(mod).__name__ + (" (YNNPACK)" if "--ynn-conv" in sys.argv else "")
    fns = {f"JAX {form}": lambda: f(variables, x).block_until_ready()}
    g = cin if depthwise else 1
    w = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # HWIO → OIHW ((k,k,1,C) → (C,1,k,k))
    sess = onnx_conv(n, cin, cout, h, k, s, p, d, g, w, bias)
    xn = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
    yo = sess.run(None, {"X": xn})[0].transpose(0, 2, 3, 1)
    err = float(np.max(np.abs(yo - y)) / (np.max(np.abs(y)) + 1e-30))
    fns["ORT Conv"] = lambda: sess.run(None, {"X": xn})
    if depthwise:
        kx = jnp.asarray(kernel)
        grouped = jax.jit(
            lambda x, kx, b: (
                jax.lax.conv_general_dilated(
                    x,
                    kx,
                    (s, s),
                    ((p, p), (p, p)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    feature_group_count=cin,
                    precision=jax.lax.Precision.HIGHEST,
                )
                + b
            )
        )
        bj = jnp.asarray(bias)
        fns["XLA grouped conv"] = lambda: grouped(x, kx, bj).block_until_ready()
        fns["XLA grouped conv"]()
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    flop = 2.0 * n * ho * ho * cout * (cin // g) * k * k
    reps = {}
    for key, fn in fns.items():  # warm-up; repetitions so that one timing is ≥ ~60 ms
        fn()
        reps[key] = max(1, int(0.06 / max(timed(fn, 1), 1e-6)))
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(timed(fn, reps[key]))
    med = {key: statistics.median(v) for key, v in times.items()}
    log(f"  {label:44s} N={n} out {ho}×{ho}×{cout}  {flop / 1e9:6.2f} GFLOP  rel.err {err:.1e}")
    for key, t in med.items():
        ratio = t / med["ORT Conv"]
        log(
            f"      {key:22s} {t * 1e3:9.2f} ms  {flop / t / 1e9:7.1f} GFLOP/s  "
            f"×{ratio:5.2f} ORT's time   (reps {reps[key]}, "
            f"rounds {[f'{v * 1e3:.1f}' for v in times[key]]})"
        )
    return med


SSD300_LAYERS = [
    ("VGG conv1_2 3×3 64→64 @300", dict(h=300, cin=64, cout=64, k=3, p=1)),
    ("VGG conv2_2 3×3 128→128 @150", dict(h=150, cin=128, cout=128, k=3, p=1)),
    ("VGG conv3_3 3×3 256→256 @75", dict(h=75, cin=256, cout=256, k=3, p=1)),
    ("VGG conv4_3 3×3 512→512 @38", dict(h=38, cin=512, cout=512, k=3, p=1)),
    ("fc6 3×3 dil 6 512→1024 @19", dict(h=19, cin=512, cout=1024, k=3, p=6, d=6)),
    ("fc7 1×1 1024→1024 @19", dict(h=19, cin=1024, cout=1024, k=1)),
]
SSDLITE_LAYERS = [
    ("stem 3×3 s2 3→32 @320", dict(h=320, cin=3, cout=32, k=3, s=2, p=1)),
    ("block1 depthwise 3×3 32 @160", dict(h=160, cin=32, cout=32, k=3, p=1, depthwise=True)),
    ("expand 1×1 16→96 @160", dict(h=160, cin=16, cout=96, k=1)),
    ("depthwise 3×3 s2 96 @160→80", dict(h=160, cin=96, cout=96, k=3, s=2, p=1, depthwise=True)),
    ("expand 1×1 24→144 @80", dict(h=80, cin=24, cout=144, k=1)),
    ("depthwise 3×3 144 @80", dict(h=80, cin=144, cout=144, k=3, p=1, depthwise=True)),
    ("project 1×1 144→24 @80", dict(h=80, cin=144, cout=24, k=1)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument(
        "--ynn-conv",
        action="store_true",
        help="child run: the k×k layers with XLA's YNNPACK convolutions",
    )
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = ap.parse_args()
    t_start = time.time()
    log(
        f"date {time.strftime('%Y-%m-%d %H:%M')}  load {os.getloadavg()}  jax {jax.__version__}  "
        f"onnxruntime {ort.__version__}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    log(f"devices {jax.devices()}  cpu count {os.cpu_count()}  batch {BATCH}, float32")
    if args.ynn_conv:
        log(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
        for label, kw in SSD300_LAYERS[:5] + SSDLITE_LAYERS[:1]:
            bench_layer(label, BATCH, rounds=args.rounds, **kw)
        return
    if not args.skip_model:
        for name in args.configs:
            size = CONFIGS[name]
            log(f"\n=== (a) whole forward, {name}, batch {BATCH}")
            n_runs = 2 if size == 300 else 4
            res = profile_jax_forward(name, size, n_runs)
            report_jax(name, *res[2:])
            del res
            profile_ort(name, size, n_runs)
    if not args.skip_layers:
        log(
            f"\n=== (b) layers, alternating JAX / ORT, median of {args.rounds} rounds, "
            f"batch {BATCH}, float32 (bias on; 1×1 JAX form is PointwiseConv = jnp.dot)"
        )
        for title, layers in (("SSD300", SSD300_LAYERS), ("SSDLite", SSDLITE_LAYERS)):
            log(f" {title}")
            for label, kw in layers:
                bench_layer(label, BATCH, rounds=args.rounds, **kw)
        log(
            "\n=== (b') k×k layers again, JAX convolution by YNNPACK instead of Eigen (in a child "
            "process with --xla_cpu_experimental_ynn_fusion_type=+individual_convolution). In the "
            "whole SSD300 forward XLA fuses VGG's conv/bias/ReLU/pool chains into ynn_fusion "
            "ops, so the model's convolutions run in YNNPACK despite the package's "
            "-individual_convolution flag (that flag only keeps lone convolutions on Eigen)."
        )
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)
        sys.stdout.flush()
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--ynn-conv", "--rounds", str(args.rounds)],
            env=env,
            check=True,
        )
    log(f"\ndone in {time.time() - t_start:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
