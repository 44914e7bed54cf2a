"""Speed and memory of a config on whatever devices JAX sees; JSON to compare runs with.

    ssd-jax-benchmark --config configs/ssd300_coco.py --batch-size 8 [--precision bf16] \
        [--out b.json]

Measures (random weights and images): compile times; inference images/s without and with
post-processing (NMS); train-step images/s; the time of matching, the loss and NMS alone (their
share of a step); the input pipeline's images/s per worker count; peak host and device memory.
Short by default on CPU (``--iters``).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ssd_jax import host_memory, provenance
from ssd_jax.cli import common

# Imported when first used, so that --help and argument errors answer at once.
jax = common.DeferredModule("jax")
jnp = common.DeferredModule("jax.numpy")
np = common.DeferredModule("numpy")


def timed(fn: Callable, iters: int) -> tuple[float, float]:
    """(first call incl. compile, mean of ``iters`` further calls) in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        jax.block_until_ready(fn())
    return first, (time.perf_counter() - t0) / iters


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.make_parser("ssd-jax-benchmark", __doc__)
    common.add_config_flags(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (images)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="computation dtype (parameters stay float32)",
    )
    parser.add_argument(
        "--iters", type=int, default=3, help="timed calls per measurement, after one warm-up call"
    )
    parser.add_argument("--skip-train", action="store_true", help="do not time the train step")
    parser.add_argument("--skip-input", action="store_true", help="do not time the input pipeline")
    parser.add_argument("--out", default="", help="also write the JSON report to this file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the file --out names if it exists"
    )
    parser.add_argument(
        "--backends",
        default="",
        help="compare inference side by side instead: a comma-separated list "
        f"of {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--batch-sizes",
        default="1,8",
        help="with --backends: the batch sizes to time, comma-separated",
    )
    parser.add_argument(
        "--modes",
        default="raw,detect",
        help="with --backends: raw (network) and/or detect (+ decoding, NMS)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="with --backends: timed rounds, each calling every backend once",
    )
    parser.add_argument(
        "--reference-onnx",
        default="",
        help="with --backends and mode raw: also time this ONNX file in ONNX "
        "Runtime (and in OpenVINO f32/bf16 where those backends are named), e.g. "
        "mmdetection's own network from scripts/export_mmdet_onnx.py (uint8 NHWC input "
        "as ours, or float32 NCHW, normalised untimed)",
    )
    parser.add_argument(
        "--checkpoint", default="", help="with --backends: weights (.pth or orbax); default random"
    )
    args, overrides = common.parse(parser, argv)
    args.command = " ".join(["ssd-jax-benchmark", *(sys.argv[1:] if argv is None else argv)])
    if args.batch_size < 1 or args.iters < 1 or args.rounds < 1:
        parser.error("--batch-size, --iters and --rounds must be at least 1")
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
    # A config mistake or an existing --out is refused before any work (and before JAX is
    # imported).
    refused = common.run_cli(lambda: _check(args, overrides), args.verbose, "ssd-jax-benchmark")
    if refused:
        return refused
    if backends:
        host_memory.keep_freed_memory()  # as the inference tools (predict, eval) run
        return common.run_cli(
            lambda: _compare(args, overrides, backends), args.verbose, "ssd-jax-benchmark"
        )
    if argv is None:  # run as a program: malloc as ssd-jax-train runs it
        host_memory.restart_with_huge_pages()
    return common.run_cli(
        lambda: _ok(benchmark(args, overrides)), args.verbose, "ssd-jax-benchmark"
    )


def _check(args: Any, overrides: list[str]) -> None:
    """ConfigError for a config mistake; OutputExistsError when ``--out`` names an existing file
    and ``--overwrite`` is not given."""
    common.load_config(args.config, overrides)
    if args.out:
        from ssd_jax.outputs import check_outputs

        folder, name = os.path.split(args.out)
        check_outputs(folder or ".", [name], overwrite=args.overwrite)


def _compare(args: Any, overrides: list[str], backends: list[str]) -> int:
    import tempfile

    from ssd_jax.config import load_config

    config = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory() as workdir:
        report = compare_backends(
            config,
            args.checkpoint,
            backends,
            [int(b) for b in args.batch_sizes.split(",") if b],
            args.rounds,
            [m for m in args.modes.split(",") if m],
            workdir,
            args.reference_onnx,
        )
    report["command"] = args.command
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _ok(report: dict) -> int:
    del report
    return 0


def benchmark(args: Any, overrides: list[str]) -> dict:
    """The JSON report (see the module docstring) for parsed ``args``."""
    from ssd_jax import Detector, objective
    from ssd_jax import postprocess as post
    from ssd_jax.assigner import build_targets
    from ssd_jax.config import load_config
    from ssd_jax.losses import flatten_levels, multibox_loss
    from ssd_jax.models.assembly import test_settings

    config = load_config(args.config, overrides)
    config.precision = args.precision
    det = Detector(config)
    n, s = args.batch_size, config.input_size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, s, s, 3)).astype(np.float32))
    images = jnp.asarray(rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8))
    scales = jnp.ones((n, 2), jnp.float32)
    report: dict = {
        "config": config.name,
        "batch": n,
        "precision": args.precision,
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "host": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": provenance.versions(),
        "commit": provenance.git_commit(pathlib.Path(__file__).resolve().parents[2]),
    }

    c_fwd, t_fwd = timed(lambda: det.forward(x), args.iters)
    c_det, t_det = timed(lambda: det.detect_batch(images, scales), args.iters)
    cls_out, box_out = det.forward(x)
    anchors = [jnp.asarray(a) for a in det.anchors()]
    settings = test_settings(config)
    nms = jax.jit(lambda c, b: post.postprocess(c, b, anchors, scales, **settings))
    _, t_nms = timed(lambda: nms(cls_out, box_out), args.iters)
    report["inference"] = {
        "compile_s": c_fwd,
        "images_per_s": n / t_fwd,
        "with_postprocess_compile_s": c_det,
        "with_postprocess_images_per_s": n / t_det,
        "postprocess_s_per_batch": t_nms,
        "postprocess_share": t_nms / t_det,
    }

    # Ground truth: 8 boxes per image.
    m = 8
    xy = rng.uniform(0, s * 0.7, (n, m, 2))
    wh = rng.uniform(s * 0.05, s * 0.3, (n, m, 2))
    gt = jnp.asarray(np.concatenate([xy, xy + wh], -1).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, config.model.num_classes, (n, m)).astype(np.int32))
    valid = jnp.ones((n, m), bool)
    flat_anchors = jnp.asarray(det.flat_anchors)
    tcfg = objective.target_settings(config)
    match = jax.jit(jax.vmap(lambda b, l, v: build_targets(flat_anchors, b, l, v, **tcfg)))
    _, t_match = timed(lambda: match(gt, labels, valid), args.iters)
    targets = match(gt, labels, valid)
    k = config.model.num_classes + 1
    loss = jax.jit(
        lambda c, b: multibox_loss(
            flatten_levels(c, k), flatten_levels(b, 4), targets, jnp.float32(n * m)
        )
    )
    _, t_loss = timed(lambda: loss(cls_out, box_out), args.iters)

    if not args.skip_train:
        from ssd_jax.parallel import replicate, shard_batch
        from ssd_jax.training import optim
        from ssd_jax.training.state import create_train_state
        from ssd_jax.training.step import make_p_train_step

        devices = jax.local_device_count()
        tx = optim.sgd(config, optim.lr_schedule(config, n, 1000))
        state = replicate(create_train_state(det.variables, tx, 0))
        per_gpu = int(config.train.get("per_gpu_batch", 0))
        used = objective.fitting_per_gpu_batch(per_gpu, n, devices)
        report["per_gpu_batch"] = {"config": per_gpu, "used": used}
        if used != per_gpu:
            note = (
                f"train.per_gpu_batch={per_gpu} does not fit a batch of {n} on {devices} "
                f"device(s): timing the train step with BatchNorm/loss groups of {used} images"
            )
            report["per_gpu_batch"]["note"] = note
            print(f"ssd-jax-benchmark: {note}", file=sys.stderr)
            config.train.per_gpu_batch = used
        p_step = make_p_train_step(config, tx, det.flat_anchors, n)
        batch = shard_batch(
            {
                "image": rng.integers(0, 255, (n, s, s, 3), dtype=np.uint8),
                "boxes": np.asarray(gt),
                "labels": np.asarray(labels),
                "valid": np.asarray(valid),
            },
            devices,
        )
        holder = {"state": state}

        def step():
            holder["state"], metrics = p_step(holder["state"], batch)
            return metrics

        c_step, t_step = timed(step, args.iters)
        report["train"] = {
            "compile_s": c_step,
            "images_per_s": n / t_step,
            "matching_s_per_batch": t_match,
            "matching_share": t_match / t_step,
            "loss_s_per_batch": t_loss,
            "loss_forward_share": t_loss / t_step,
        }

    if not args.skip_input:
        report["input_pipeline"] = input_rate(config, n)

    report["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["malloc"] = host_memory.describe()
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        report["peak_device_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
    report["cpu"] = cpu_description()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


def cpu_description() -> dict[str, Any]:
    """The CPU model, its core count, the flags that matter for speed and the load now."""
    return {
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "model": provenance.cpu_model(),
        "flags": provenance.cpu_flags(),
    }


def input_rate(config, batch: int, batches: int = 6) -> dict:
    """Training input pipeline images/s on generated data, for 0, 1 and 2 workers."""
    from ssd_jax.data.coco import CocoSource
    from ssd_jax.data.pipeline import make_train_loader
    from ssd_jax.data.synthetic import write_shapes_dataset

    out = {}
    with tempfile.TemporaryDirectory() as root:
        write_shapes_dataset(root, num_train=batch * (batches + 2), num_val=1, image_size=480)
        source = CocoSource(
            f"{root}/annotations/instances_train.json", f"{root}/train", filter_train=True
        )
        for workers in (0, 1, 2):
            loader = make_train_loader(
                source, config, global_batch_size=batch, seed=0, num_workers=workers
            )
            with loader:
                next(loader)
                t0 = time.perf_counter()
                for _ in range(batches):
                    next(loader)
                out[f"workers_{workers}_images_per_s"] = (
                    batch * batches / (time.perf_counter() - t0)
                )
    return out


BACKENDS = (
    "jax",
    "jax-bf16",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "litert",
    "litert-1t",
    "litert-int8",
    "litert-int8-1t",
)

#: Whose versions a backend comparison records.
BACKEND_PACKAGES = (
    "jax",
    "jaxlib",
    "onnx",
    "onnxruntime",
    "openvino",
    "tensorflow-cpu",
    "ai-edge-litert",
)

#: The ONNX file each ONNX Runtime / OpenVINO backend runs: its ``quantize`` export option.
ONNX_QUANTIZATION = {"onnxruntime-int8": "int8", "openvino-int8": "int8-openvino"}

#: Random uint8 images that calibrate the int8 files of 'litert-int8', 'onnxruntime-int8' and
#: 'openvino-int8': a speed figure only
#: (scripts/quantization_report.py measures what int8 costs in AP, calibrated on real images).
INT8_CALIBRATION_IMAGES = 8


def compare_backends(
    config: Any,
    checkpoint: str,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    rounds: int,
    modes: Sequence[str],
    workdir: str,
    reference_onnx: str = "",
) -> dict[str, Any]:
    """Images/s of the same model in each backend, side by side: the same uint8 images, a
    warm-up per backend, then ``rounds`` rounds that call every backend once, in an order
    rotated each round (so that load and frequency changes touch all alike).

    ``modes``: 'raw' (normalisation + network) and/or 'detect' (+ decoding and NMS). JAX runs
    the functions ``ssd-jax-export`` exports; ONNX Runtime / OpenVINO / LiteRT run the exported
    files (LiteRT's batch-1 .tflite once per image; 'litert' on every core, 'litert-1t' on one;
    'litert-int8*' the full-integer file, 'onnxruntime-int8' ONNX Runtime's static int8,
    'openvino-int8' NNCF's int8 in OpenVINO (f32 where not int8), all
    calibrated on ``INT8_CALIBRATION_IMAGES`` random images).
    ``reference_onnx``: another raw network (e.g. mmdetection's own from
    ``scripts/export_mmdet_onnx.py``) timed in ONNX Runtime as ``onnxruntime-reference`` and in
    each OpenVINO backend named (``openvino-reference``, ``openvino-bf16-reference``): given the
    same uint8 images where it takes uint8, else float32 NCHW normalised beforehand (not timed).
    """
    from ssd_jax.detector import Detector
    from ssd_jax.export import export, runtime
    from ssd_jax.export.graph import detect_fn, raw_fn
    from ssd_jax.models.assembly import zero_variables
    from ssd_jax.porting import load_checkpoint_variables

    config.precision = "fp32"
    if checkpoint:
        det = Detector(config, load_checkpoint_variables(checkpoint, zero_variables(config)))
    else:
        det = Detector(config)
    runners: dict[str, dict[str, Callable]] = {m: {} for m in modes}
    quantization: dict[str, str] = {}  # exported backend → its file's ssd_jax.quantization
    for mode in modes:
        raw = mode == "raw"
        onnx_paths = {}  # quantization ('' or an ONNX_QUANTIZATION value) → .onnx
        for quantize in {
            ONNX_QUANTIZATION.get(b, "")
            for b in backends
            if b.startswith(("onnxruntime", "openvino"))
        }:
            onnx_paths[quantize] = os.path.join(workdir, f"{config.name}_{mode}{quantize}.onnx")
            options = _random_calibration(config.input_size, quantize) if quantize else {}
            export(det, onnx_paths[quantize], "onnx", raw=raw, **options)
        tflite_paths = {}  # quantization ('' or 'int8') → .tflite
        for quantize in {"int8" if "int8" in b else "" for b in backends if b.startswith("litert")}:
            tflite_paths[quantize] = os.path.join(workdir, f"{config.name}_{mode}{quantize}.tflite")
            options = _random_calibration(config.input_size, quantize) if quantize else {}
            export(det, tflite_paths[quantize], "tflite", raw=raw, **options)
        for backend in backends:
            if backend.startswith("jax"):
                d = det
                if backend == "jax-bf16":
                    bf16 = config.copy_and_resolve_references()
                    bf16.precision = "bf16"
                    d = Detector(bf16, det.variables)
                fn = jax.jit(raw_fn(d) if raw else detect_fn(d))
                runners[mode][backend] = _jax_runner(fn, raw)
            elif backend.startswith("litert"):
                threads = 1 if backend.endswith("-1t") else None
                file = tflite_paths["int8" if "int8" in backend else ""]
                model = runtime.LiteRTModel(file, num_threads=threads)
                runners[mode][backend] = _model_runner(model, raw)
            else:
                path = onnx_paths[ONNX_QUANTIZATION.get(backend, "")]
                if backend == "openvino-bf16":
                    model = runtime.OpenVINOModel(path, precision="bf16")
                else:
                    model = runtime.load(path, backend.removesuffix("-int8"))
                runners[mode][backend] = _model_runner(model, raw)
            if not backend.startswith("jax"):
                quantization[backend] = model.quantization
        if raw and reference_onnx:
            for runtime_name in REFERENCE_RUNTIMES:
                if runtime_name == "onnxruntime" or runtime_name in backends:
                    runners[mode][f"{runtime_name}-reference"] = _reference_runner(
                        reference_onnx, runtime_name
                    )
    rng = np.random.default_rng(0)
    s = config.input_size
    report: dict[str, Any] = {
        "config": config.name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_description(),
        "versions": provenance.versions(BACKEND_PACKAGES),
        "rounds": rounds,
        "quantization": quantization,
        "results": {},
    }
    for n in batch_sizes:
        images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
        scales = np.ones((n, 2), np.float32)
        for mode in modes:
            names = list(runners[mode])
            times: dict[str, list[float]] = {b: [] for b in names}
            for b in names:  # warm-up (compiles)
                runners[mode][b](images, scales)
                runners[mode][b](images, scales)
            for r in range(rounds):
                for b in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    runners[mode][b](images, scales)
                    times[b].append(time.perf_counter() - t0)
            report["results"][f"batch_{n}_{mode}"] = {
                b: {
                    "images_per_s_median": n / float(np.median(t)),
                    "images_per_s_best": n / float(np.min(t)),
                }
                for b, t in times.items()
            }
    report["cpu"]["load_avg_end"] = os.getloadavg()
    return report


def _random_calibration(size: int, quantize: str = "int8") -> dict[str, Any]:
    """``export``'s options for ``quantize``: ``INT8_CALIBRATION_IMAGES`` random
    (1, size, size, 3) uint8 images with scale factors 1."""
    rng = np.random.default_rng(1)
    batches = [
        (rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8), np.ones((1, 2), np.float32))
        for _ in range(INT8_CALIBRATION_IMAGES)
    ]
    return {"quantize": quantize, "calibration": batches}


def _jax_runner(fn: Callable, raw: bool) -> Callable:
    def run(images, scales):
        out = fn(images) if raw else fn(images, scales)
        jax.block_until_ready(out)

    return run


#: Where ``--reference-onnx`` is timed: always ONNX Runtime, and each OpenVINO backend named.
REFERENCE_RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")


def _reference_runner(path: str, runtime_name: str = "onnxruntime") -> Callable:
    """Run the reference network in ``runtime_name`` (one of ``REFERENCE_RUNTIMES``), with the
    settings our own exports get there (``runtime.OpenVINOModel``).

    A reference whose input is uint8 takes the benchmark's images as they are (B, S, S, 3), as
    ours do; any other is given them normalised to float32 NCHW beforehand, untimed.
    """
    if runtime_name == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        takes_uint8 = session.get_inputs()[0].type == "tensor(uint8)"
        call = lambda x: session.run(None, {name: x})
    else:
        import openvino as ov

        precision = "bf16" if runtime_name == "openvino-bf16" else "f32"
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        takes_uint8 = compiled.inputs[0].get_element_type() == ov.Type.u8
        call = lambda x: compiled(x)
    if takes_uint8:
        return lambda images, scales: call(images)
    inputs: dict[int, np.ndarray] = {}

    def run(images, scales):
        del scales
        key = id(images)
        if key not in inputs:  # the same batch every round: normalise it once, untimed
            inputs.clear()
            inputs[key] = np.ascontiguousarray(
                ((images - np.float32(127.5)) / np.float32(58.0)).transpose(0, 3, 1, 2), np.float32
            )
        return call(inputs[key])

    return run


def _model_runner(model: Any, raw: bool) -> Callable:
    def run(images, scales):
        if raw:
            model(images=images)
        else:
            model(images=images, scale_factors=scales)

    return run
