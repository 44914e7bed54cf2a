"""What int8 costs: COCO AP of a trained model exported to LiteRT and to ONNX (ONNX Runtime,
OpenVINO) in float32 and in int8, against the JAX model itself, and each int8 file's detection
agreement on the SSDLite fixture.

    python scripts/quantization_report.py --config configs/ssdlite_shapes.py \
        --checkpoint runs/shapes/checkpoints --calibration data/shapes/train \
        --out docs/benchmarks/int8_DATE.json [--calibration-images 100]

Part 1 (the trained model): ``ssd-jax-export --format tflite`` and ``--format onnx`` (float32)
and each with ``--quantize int8 --calibration DIR`` (the first N images of DIR by name; for
OpenVINO ``--format onnx --quantize int8-openvino``, NNCF's), then ``ssd-jax-eval`` on the
config's val split with ``--backend jax`` (the checkpoint), ``litert``, ``onnxruntime`` and
``openvino`` (each file): COCO mAP and mAP@0.5, and the drop of each from float32 to int8 per
runtime.

Part 2 (the SSDLite fixture, random weights; needs ../shared/fixtures): the fixture checkpoint
exported in float32 and int8 for each runtime (calibrated on the fixture's two images), run on
those images: of the float32 file's top-20 detections per image, how many the int8 file also has
(same label, IoU >= 0.5), and the largest score difference among those.

Writes the figures with the date, CPU model, versions and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import lzma
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "ssdlite_mobilenetv2_320_coco"
TOP = 20
#: runtime → the export format it runs, and its int8 ``--quantize``
RUNTIMES = {
    "litert": ("tflite", "int8"),
    "onnxruntime": ("onnx", "int8"),
    "openvino": ("onnx", "int8-openvino"),
}


def export(config: str, checkpoint: str, out: pathlib.Path, *extra: str) -> pathlib.Path:
    """``out`` exported by ``ssd-jax-export`` (format from its suffix), once: in this script's
    temporary folder each file name stands for one export (ONNX Runtime's and OpenVINO's
    float32 file is the same ``fp32.onnx``), so an existing ``out`` is reused."""
    from ssd_jax.cli.export import main

    if out.exists():
        return out
    fmt = out.suffix.removeprefix(".")
    argv = ["--config", config, "--checkpoint", checkpoint, "--format", fmt]
    status = main([*argv, "--out", str(out), *extra])
    if status != 0:
        raise SystemExit(f"export failed ({status}): {out}")
    return out


def coco_ap(config: str, checkpoint: str, backend: str, out: pathlib.Path, data: list[str]) -> dict:
    from ssd_jax.cli.evaluate import evaluate

    argv = ["--config", config, "--checkpoint", checkpoint, "--backend", backend, *data]
    metrics = evaluate([*argv, "--out", str(out), "--overwrite", "--no-progress"])
    return {"mAP": metrics["bbox_mAP"], "mAP@0.5": metrics["bbox_mAP_50"]}


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def agreement(fp32: dict, int8: dict) -> tuple[int, float]:
    """Of fp32's top TOP detections, how many int8 has (same label, IoU >= 0.5), and the
    largest score difference among the matched."""
    boxes, labels, scores = (fp32[k][:TOP] for k in ("boxes", "labels", "scores"))
    overlap = iou(boxes, int8["boxes"])
    kept, worst = 0, 0.0
    for i in range(len(boxes)):
        ok = (int8["labels"] == labels[i]) & (overlap[i] >= 0.5)
        if ok.any():
            kept += 1
            j = int(np.flatnonzero(ok)[np.argmax(overlap[i][ok])])
            worst = max(worst, float(abs(int8["scores"][j] - scores[i])))
    return kept, worst


def fixture_agreement(tmp: pathlib.Path, runtime_name: str) -> dict:
    from ssd_jax.export import runtime

    ref = np.load(FIXTURE / "reference.npz")
    images = [ref["image_0"], ref["image_1"]]
    ckpt, calib = tmp / "fixture.pth", tmp / "fixture_images"
    if not ckpt.exists():  # once for all runtimes
        ckpt.write_bytes(lzma.decompress((FIXTURE / "checkpoint.pth.xz").read_bytes()))
        calib.mkdir()
        import cv2

        for i, image in enumerate(images):
            cv2.imwrite(str(calib / f"{i}.png"), image[:, :, ::-1])
    config = str(REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py")
    fmt, quantize = RUNTIMES[runtime_name]
    files = {
        "fp32": export(config, str(ckpt), tmp / f"fixture_fp32.{fmt}"),
        "int8": export(
            config,
            str(ckpt),
            tmp / f"fixture_{quantize}.{fmt}",
            "--quantize",
            quantize,
            "--calibration",
            str(calib),
        ),
    }
    results = {k: runtime.predict(runtime.load(v, runtime_name), images) for k, v in files.items()}
    rows = [agreement(a, b) for a, b in zip(results["fp32"], results["int8"], strict=True)]
    return {
        "calibration": "the fixture's 2 images",
        "top": TOP,
        "int8_has_of_fp32_top": [k for k, _ in rows],
        "max_score_diff": max(w for _, w in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="the trained checkpoint")
    parser.add_argument("--calibration", required=True, help="a folder of calibration images")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--ann-file", help="val annotations (default: the config's)")
    parser.add_argument("--img-dir", help="val images (default: the config's)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from ssd_jax import provenance

    report: dict = {
        "script": "scripts/quantization_report.py",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": provenance.machine(),
        "versions": provenance.versions(
            (
                *provenance.DEFAULT_PACKAGES,
                "tensorflow-cpu",
                "ai-edge-litert",
                "onnxruntime",
                "openvino",
                "nncf",
            )
        ),
        "commit": provenance.git_commit(REPO),
        "config": args.config,
        "checkpoint": args.checkpoint,
        "val": {"ann_file": args.ann_file, "img_dir": args.img_dir},
        "calibration": f"first {args.calibration_images} images of {args.calibration}",
    }
    calibration = ["--calibration", args.calibration]
    calibration += ["--calibration-images", str(args.calibration_images)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = [f"--{k}={v}" for k, v in (("ann-file", args.ann_file), ("img-dir", args.img_dir))]
        data = [d for d in data if not d.endswith("=None")]
        ap = {"jax": coco_ap(args.config, args.checkpoint, "jax", tmp / "eval_jax", data)}
        report["coco"], report["int8_drop"], report["sizes_bytes"] = ap, {}, {}
        for name, (fmt, quantize) in RUNTIMES.items():
            fp32 = export(args.config, args.checkpoint, tmp / f"fp32.{fmt}")
            int8 = export(
                args.config,
                args.checkpoint,
                tmp / f"{quantize}.{fmt}",
                "--quantize",
                quantize,
                *calibration,
            )
            for precision, file in (("fp32", fp32), ("int8", int8)):
                out = tmp / f"eval_{name}_{precision}"
                ap[f"{name}_{precision}"] = coco_ap(args.config, str(file), name, out, data)
            report["int8_drop"][name] = {
                k: ap[f"{name}_fp32"][k] - ap[f"{name}_int8"][k] for k in ("mAP", "mAP@0.5")
            }
            report["sizes_bytes"][name] = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
        if (FIXTURE / "reference.npz").is_file():
            report["ssdlite_fixture"] = {name: fixture_agreement(tmp, name) for name in RUNTIMES}
    text = json.dumps(report, indent=1)
    pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
