"""SSD's VGG16 k×k convolutions one at a time, ours beside torch's: where SSD300's CPU train step
stands against mmdetection's, layer by layer.

    python scripts/conv_layers_vs_torch.py --torch-python /tmp/mmdet_ref/venv/bin/python \\
        [--config ssd300_coco] [--layers vgg|neck_head|all] [--batch 8] [--rounds 2] [--iters 5] \\
        [--out FILE.json]

For every distinct 3×3 convolution of the config's VGG16 (the 13 backbone layers at their input
sizes and fc6, dilation 6; ``--layers neck_head``: the neck's and head's k×k ones, found in
the model; ``all``: both), float32, random data, batch ``--batch``, NHWC for ours and NCHW
for torch: the forward (convolution + bias), and forward + backward of ``sum(relu(y)) / 2``
(input, weight and bias gradients), each timed ``--iters`` times after two untimed calls,
median. Each (layer, side) runs in its own process. Ours is the layer as the model builds it
(``layers.conv``: ``nn.Conv``, or on CPU ``TapProductConv`` for the dilated fc6), and for fc6
also XLA's dilated convolution (``xla_conv``). Ours imports ``ssd_jax`` first, so XLA runs the
convolutions as the train step does (Eigen: ``import ssd_jax`` sets
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``; without it XLA hands a
lone convolution to YNNPACK, whose weight gradient is ~4× slower); torch's runs in the Python
named by ``--torch-python`` (mmdetection's environment). Both on glibc malloc's huge pages, as
``ssd-jax-train`` runs (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` unless set). ``--rounds``
sweeps, alternating which side goes first.

The JSON holds every timing, per layer the medians over rounds, GFLOP/s (2·N·H·W·C_in·C_out·k²
forward, three times that forward + backward), and the sums weighted by how often each shape
occurs in the network.

``--alternation``: instead, whether alternating executables in one process slows a layer (as
``scripts/depthwise_backward.py`` once assumed): ours, the 150×150×128 layer's forward +
backward timed 5 times alone, then 5 times each after calls of two other layers' (75×75×256,
38×38×512), with ssd_jax's XLA flags and without them (lone convolutions on YNNPACK).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vgg_layers(config_name: str) -> list[dict]:
    """The distinct 3×3 convolutions of the config's VGG16 in call order, with their count:
    input side (px), channels in and out, dilation."""
    sys.path.insert(0, REPO)
    from ssd_jax.config import load_config
    from ssd_jax.models.vgg import VGG16_STAGES

    size = load_config(os.path.join(REPO, "configs", f"{config_name}.py"), []).input_size
    layers: dict[tuple, dict] = {}
    c_in = 3
    for stage, (num_convs, channels) in enumerate(VGG16_STAGES):
        for _ in range(num_convs):
            key = (size, c_in, channels, 1)
            layers.setdefault(key, {"count": 0})["count"] += 1
            c_in = channels
        if stage < len(VGG16_STAGES) - 1:
            size = math.ceil(size / 2)  # 2×2/2 ceil-mode pool
    layers[(size, c_in, 1024, 6)] = {"count": 1}  # fc6 after the 3×3/1 pool5
    return [
        {
            "side_px": s,
            "c_in": ci,
            "c_out": co,
            "dilation": d,
            "kernel": 3,
            "stride": 1,
            "padding": d,
            **v,
        }
        for (s, ci, co, d), v in layers.items()
    ]


def neck_and_head_layers(config_name: str) -> list[dict]:
    """The distinct k×k convolutions (k > 1) of the config's neck (extra layers) and head, from
    the model's own modules, with their count and where they are."""
    sys.path.insert(0, REPO)
    import flax.linen as nn
    import numpy as np

    from ssd_jax import Detector
    from ssd_jax.config import load_config

    det = Detector(load_config(os.path.join(REPO, "configs", f"{config_name}.py"), []))
    found: dict[tuple, dict] = {}

    def record(next_fun, args, kwargs, context):
        module, path = context.module, "/".join(context.module.path)
        if context.method_name == "__call__" and not path.startswith("backbone"):
            kernel = getattr(module, "kernel_size", None)
            if isinstance(kernel, tuple) and kernel[0] > 1:  # nn.Conv (k > 1)
                key = (
                    args[0].shape[1],
                    args[0].shape[-1],
                    module.features,
                    module.kernel_dilation or 1,
                    kernel[0],
                    (module.strides or (1,))[0],
                    module.padding[0][0],
                )
                key = tuple(k[0] if isinstance(k, tuple) else k for k in key)
                entry = found.setdefault(key, {"count": 0, "where": path.split("/")[0]})
                entry["count"] += 1
        return next_fun(*args, **kwargs)

    size = det.config.input_size
    with nn.intercept_methods(record):
        det.model.apply(det.variables, np.zeros((1, size, size, 3), np.float32))
    return [
        {
            "side_px": s,
            "c_in": ci,
            "c_out": co,
            "dilation": d,
            "kernel": k,
            "stride": st,
            "padding": p,
            **v,
        }
        for (s, ci, co, d, k, st, p), v in found.items()
    ]


def _worker(side: str, spec: str, iters: int) -> None:
    """Time one layer on one side; prints a JSON line."""
    import numpy as np

    n, size, c_in, c_out, k, stride, pad, dil = (int(v) for v in spec.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, c_in), np.float32)
    w = rng.standard_normal((k, k, c_in, c_out), np.float32) * 0.05
    b = rng.standard_normal((c_out,), np.float32) * 0.05
    if side in ("ours", "xla_conv"):
        __import__("ssd_jax")  # its XLA flags, before JAX starts
        import jax
        import jax.numpy as jnp

        from ssd_jax.models import layers

        module = layers.conv(c_out, k, stride, pad, dilation=dil)  # as the model builds it

        def conv(x, w, b):
            if side == "ours":
                return module.apply({"params": {"kernel": w, "bias": b}}, x)
            y = jax.lax.conv_general_dilated(
                x,
                w,
                (stride, stride),
                [(pad, pad)] * 2,
                rhs_dilation=(dil, dil),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )
            return y + b

        loss = lambda x, w, b: 0.5 * jnp.sum(jax.nn.relu(conv(x, w, b)))  # noqa: E731
        fwd, grad = jax.jit(conv), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        args = [jnp.asarray(a) for a in (x, w, b)]
        run_fwd = lambda: jax.block_until_ready(fwd(*args))  # noqa: E731
        run_both = lambda: jax.block_until_ready(grad(*args))  # noqa: E731
    else:
        import torch

        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        conv = lambda: torch.nn.functional.conv2d(  # noqa: E731
            xt, wt, bt, stride=stride, padding=pad, dilation=dil
        )

        def run_fwd():
            with torch.no_grad():
                conv()

        def run_both():
            for t in (xt, wt, bt):
                t.grad = None
            (0.5 * torch.relu(conv()).sum()).backward()

    out = {"xla_flags": os.environ.get("XLA_FLAGS")} if side != "torch" else {}
    if side == "ours":
        out["module"] = type(module).__name__
    for kind, fn in (("fwd", run_fwd), ("fwd_bwd", run_both)):
        fn()
        fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[kind] = times
    print(json.dumps(out), flush=True)


def _alternation_worker(batch: int, iters: int) -> None:
    """The 150×150×128 layer alone, then alternating with two others; prints a JSON line."""
    import numpy as np

    if os.environ.get("SSD_JAX_LAYERS_FLAGS") == "1":
        __import__("ssd_jax")  # its XLA flags, before JAX starts
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)

    def layer(size: int, channels: int):
        x = jnp.asarray(rng.standard_normal((batch, size, size, channels), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32) * 0.05)

        def loss(x, w):
            y = jax.lax.conv_general_dilated(
                x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return 0.5 * jnp.sum(jax.nn.relu(y))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return lambda: jax.block_until_ready(grad(x, w))

    main, others = layer(150, 128), [layer(75, 256), layer(38, 512)]
    for fn in (main, *others):
        fn()
        fn()

    def timed() -> float:
        t0 = time.perf_counter()
        main()
        return time.perf_counter() - t0

    alone = [timed() for _ in range(iters)]
    alternating = []
    for _ in range(iters):
        for fn in others:
            fn()
        alternating.append(timed())
    print(
        json.dumps(
            {
                "xla_flags": os.environ.get("XLA_FLAGS"),
                "alone_s": alone,
                "alternating_s": alternating,
            }
        ),
        flush=True,
    )


def _run(side: str, python: str, spec: str, iters: int) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    if "GLIBC_TUNABLES" not in env:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    cmd = [python, os.path.abspath(__file__), "--worker", side, spec, "--iters", str(iters)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{side} worker failed on {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from compare_speed import report_header

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True, help="a Python with torch (mmdetection's)")
    parser.add_argument("--config", default="ssd300_coco")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--layers", choices=("vgg", "neck_head", "all"), default="vgg")
    parser.add_argument("--alternation", action="store_true", help="see the docstring")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists: name another file")
    if args.alternation:
        return _alternation(args, argv)

    report = report_header("scripts/conv_layers_vs_torch.py", argv)
    report |= {"config": args.config, "batch": args.batch, "precision": "fp32", "layers": []}
    torch_version = subprocess.run(
        [args.torch_python, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    report["versions"]["torch"] = torch_version
    layers = vgg_layers(args.config) if args.layers in ("vgg", "all") else []
    if args.layers in ("neck_head", "all"):
        layers += neck_and_head_layers(args.config)
    pythons = {"ours": sys.executable, "torch": args.torch_python}
    timings = {i: {"ours": [], "torch": [], "xla_conv": []} for i in range(len(layers))}
    for r in range(args.rounds):
        for i, layer in enumerate(layers):
            sides = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
            if layer["dilation"] > 1:
                sides += ("xla_conv",)
            keys = ("side_px", "c_in", "c_out", "kernel", "stride", "padding", "dilation")
            spec = ",".join(str(v) for v in (args.batch, *(layer[k] for k in keys)))
            for side in sides:
                python = pythons.get(side, sys.executable)
                timings[i][side].append(_run(side, python, spec, args.iters))
            print(f"round {r + 1}/{args.rounds}: {spec} done", file=sys.stderr, flush=True)

    totals_sides = ("ours", "torch")
    totals = {f"{side}_{kind}_ms": 0.0 for side in totals_sides for kind in ("fwd", "fwd_bwd")}
    header = "count  fwd ours/torch ms  ratio  fwd+bwd ours/torch ms  ratio"
    print(f"{'layer (px, in, out, dil)':26} {header}")
    for i, layer in enumerate(layers):
        s, k = layer["side_px"], layer["kernel"]
        out = (s + 2 * layer["padding"] - layer["dilation"] * (k - 1) - 1) // layer["stride"] + 1
        gflop = 2 * args.batch * out * out * layer["c_in"] * layer["c_out"] * k * k / 1e9
        row = dict(layer, gflop_fwd=gflop, runs=timings[i])
        for kind, factor in (("fwd", 1), ("fwd_bwd", 3)):
            for side, runs in timings[i].items():
                if not runs:
                    continue
                ms = 1e3 * statistics.median(statistics.median(run[kind]) for run in runs)
                row[f"{side}_{kind}_ms"] = ms
                row[f"{side}_{kind}_gflop_per_s"] = factor * gflop / (ms / 1e3)
                if side in totals_sides:
                    totals[f"{side}_{kind}_ms"] += layer["count"] * ms
            # >1: ours faster
            row[f"{kind}_ratio"] = row[f"torch_{kind}_ms"] / row[f"ours_{kind}_ms"]
        report["layers"].append(row)
        name = f"{s}, {layer['c_in']}, {layer['c_out']}, {layer['dilation']}"
        if layer.get("where"):
            name += f" {layer['where']} k{k}s{layer['stride']}"
        print(
            f"{name:26} {layer['count']:5}  {row['ours_fwd_ms']:7.1f} / {row['torch_fwd_ms']:7.1f}"
            f"  {row['fwd_ratio']:5.2f}×  {row['ours_fwd_bwd_ms']:8.1f} / "
            f"{row['torch_fwd_bwd_ms']:8.1f}      {row['fwd_bwd_ratio']:5.2f}×"
            f"  ({row['runs']['ours'][0]['module']})"
        )
        if timings[i]["xla_conv"]:
            print(
                f"{'  (XLA dilated convolution)':26}        {row['xla_conv_fwd_ms']:7.1f}"
                f"                   {row['xla_conv_fwd_bwd_ms']:8.1f}"
            )
    report["weighted_totals"] = totals | {
        "fwd_ratio": totals["torch_fwd_ms"] / totals["ours_fwd_ms"],
        "fwd_bwd_ratio": totals["torch_fwd_bwd_ms"] / totals["ours_fwd_bwd_ms"],
    }
    t = report["weighted_totals"]
    print(
        f"{'all layers, weighted':26}        {t['ours_fwd_ms']:7.0f} / {t['torch_fwd_ms']:7.0f}"
        f"  {t['fwd_ratio']:5.2f}×  {t['ours_fwd_bwd_ms']:8.0f} / {t['torch_fwd_bwd_ms']:8.0f}"
        f"      {t['fwd_bwd_ratio']:5.2f}×"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _alternation(args: argparse.Namespace, argv: list[str] | None) -> int:
    from compare_speed import report_header

    report = report_header("scripts/conv_layers_vs_torch.py", argv) | {"batch": args.batch}
    for flags in ("1", "0", "1", "0")[: 2 * args.rounds]:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env |= {"PYTHONPATH": REPO, "SSD_JAX_LAYERS_FLAGS": flags}
        env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        cmd = [sys.executable, os.path.abspath(__file__), "--alternation-worker"]
        cmd += [str(args.batch), str(args.iters)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(f"alternation worker failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        label = "with ssd_jax's flags" if flags == "1" else "without them"
        report.setdefault(label, []).append(run)
        ms = lambda v: [round(1e3 * t) for t in v]  # noqa: E731
        print(f"{label}: alone {ms(run['alone_s'])} ms, alternating {ms(run['alternating_s'])} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--alternation-worker":
        _alternation_worker(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
