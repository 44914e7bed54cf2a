"""Which depthwise layers gain from the one-pass kernel gradient: every distinct depthwise layer
of the named configs, at their input size and ``--batch``, timed forward + backward (gradients of
input and kernel) with ``layers.depthwise_sum`` (autodiff) and ``layers.depthwise_one_pass``,
the two alternated round by round in one process.

    python scripts/depthwise_backward.py [--configs ssdlite_mobilenetv2_320_coco ssdlite_shapes]
        [--batch 8] [--rounds 7] [--iters 5] [--out FILE.json]

Each timing follows one untimed call, so that none is the first call after the other
executable ran. (What this was first blamed on, a lone 150×150×128 convolution at 2.2-2.5 s
alternating with other executables and 0.56 s alone, was not reproduced: with ssd_jax's XLA
flags its forward+backward took 0.87-1.33 s alone and 0.84-1.34 s alternating with two others
(medians 0.95 → 0.88 s and 1.04 → 1.27 s in two runs); without them XLA hands a lone
convolution to YNNPACK: 2.4-3.1 s, alternating 15-20 % slower. AMD EPYC with AVX-512, 2026-12-07;
``scripts/conv_layers_vs_torch.py --alternation``,
docs/benchmarks/conv_alternation_2026-12-07_avx512.json.)
Single-layer timings do not decide: inside the train step XLA fuses the layer with its
neighbours, and ``layers.ONE_PASS_MIN_WIDTH`` was chosen from ``compare_speed.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_speed import report_header  # noqa: E402


def layer_shapes(config_name: str) -> list[dict]:
    """The distinct (input shape at batch 1, kernel, stride, padding) of a config's depthwise
    layers, in call order."""
    import flax.linen as nn
    import numpy as np

    from ssd_jax import Detector
    from ssd_jax.config import load_config
    from ssd_jax.models import layers

    config = load_config(os.path.join("configs", f"{config_name}.py"), [])
    det = Detector(config)
    seen: list[dict] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, layers.DepthwiseConv) and context.method_name == "__call__":
            x = args[0]
            layer = {
                "hwc": list(x.shape[1:]),
                "kernel": module.kernel_size,
                "stride": module.stride,
                "padding": module.padding,
            }
            if layer not in seen:
                seen.append(layer)
        return next_fun(*args, **kwargs)

    s = config.input_size
    with nn.intercept_methods(record):
        det.model.apply(det.variables, np.zeros((1, s, s, 3), np.float32))
    return seen


def time_layer(layer: dict, batch: int, rounds: int, iters: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ssd_jax.models import layers

    h, w, c = layer["hwc"]
    k, s, p = layer["kernel"], layer["stride"], layer["padding"]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, h, w, c)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(k, k, c)).astype(np.float32))
    y_shape = jax.eval_shape(lambda: layers.depthwise_sum(x, kernel, s, p)).shape
    g = jnp.asarray(rng.normal(size=y_shape).astype(np.float32))

    def grads(fn):
        return jax.jit(jax.grad(lambda x, kernel: jnp.vdot(fn(x, kernel, s, p), g), (0, 1)))

    fns = {"autodiff": grads(layers.depthwise_sum), "one_pass": grads(layers.depthwise_one_pass)}
    for fn in fns.values():
        jax.block_until_ready(fn(x, kernel))
        jax.block_until_ready(fn(x, kernel))
    ms: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            jax.block_until_ready(fn(x, kernel))  # untimed: switching executables costs a call
            t0 = time.perf_counter()
            for _ in range(iters):
                out = fn(x, kernel)
            jax.block_until_ready(out)
            ms[name].append((time.perf_counter() - t0) / iters * 1e3)
    med = {name: statistics.median(v) for name, v in ms.items()}
    return layer | {
        "batch": batch,
        "ms": ms,
        "median_ms": med,
        "speedup": med["autodiff"] / med["one_pass"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["ssdlite_mobilenetv2_320_coco", "ssdlite_shapes"]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out):
        parser.error(f"{args.out} exists; choose another --out")
    from tqdm import tqdm

    from ssd_jax.models import layers

    report = report_header("scripts/depthwise_backward.py", argv)
    report["one_pass_min_width"] = layers.ONE_PASS_MIN_WIDTH
    report["configs"] = {}
    for name in args.configs:
        shapes = layer_shapes(name)
        rows = [
            time_layer(layer, args.batch, args.rounds, args.iters)
            for layer in tqdm(shapes, desc=name, unit="layer")
        ]
        report["configs"][name] = rows
        print(f"\n{name} (batch {args.batch}):")
        print(
            f"{'input HxWxC':>16} {'k/s/p':>6} {'autodiff ms':>12} {'one pass ms':>12} {'gain':>6}"
        )
        for r in rows:
            hwc = "x".join(map(str, r["hwc"]))
            ksp = f"{r['kernel']}/{r['stride']}/{r['padding']}"
            med = r["median_ms"]
            print(
                f"{hwc:>16} {ksp:>6} {med['autodiff']:12.2f} {med['one_pass']:12.2f}"
                f" {r['speedup']:5.2f}x"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
