"""Export a config's SSD with its weights for serving.

    ssd-jax-export --config ssdlite_mobilenetv2_320_coco --checkpoint model.pth \\
        --format onnx --out ssdlite.onnx [--raw]

--format onnx   one .onnx file (jax2onnx + ONNX NonMaxSuppression), for ONNX Runtime/OpenVINO.
--format jax    a jax.export artifact (serialized StableHLO with the weights) and PATH.json.
--format tflite a .tflite file (jax2tf + TF's TFLite converter, metadata inside), for LiteRT;
                float32, or with --quantize int8 --calibration DIR full-integer int8
                (post-training, calibrated on --calibration-images images from DIR).
                --format onnx --quantize int8: ONNX Runtime's static int8 (QDQ: int8 weights per
                channel, uint8 activations; decoding and NMS in float32), calibrated the same way;
                --quantize int8-openvino: NNCF's int8 for OpenVINO (QDQ around the network only).
--raw           the head outputs only, and the anchors as a .npy beside the model.
The network is exported in float32. Existing files are not replaced without --overwrite.
Needs the export requirements (the README's Deploy section).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ssd_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.make_parser("ssd-jax-export", __doc__)
    common.add_config_flags(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="mmdetection .pth (.xz accepted) or orbax checkpoint directory",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=("onnx", "jax", "tflite"),
        help="onnx (ONNX Runtime, OpenVINO), jax (jax.export artifact) or tflite (LiteRT)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8", "int8-openvino"),
        default="none",
        help="--format tflite or onnx: int8 post-training quantization (--calibration); "
        "int8-openvino (--format onnx): NNCF's, for OpenVINO",
    )
    parser.add_argument(
        "--calibration",
        default="",
        metavar="DIR",
        help="--quantize int8*: a folder of images (jpg/png/...) to calibrate on",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=100,
        metavar="N",
        help="--quantize int8*: calibrate on the folder's first N images by name (default 100)",
    )
    parser.add_argument("--out", required=True, help="the model file to write")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="export the head outputs only (+ anchors .npy), no decoding/NMS",
    )
    parser.add_argument(
        "--platforms",
        default="cpu,cuda",
        help="--format jax: comma-separated jax platforms to lower for",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files --out (and its .json / .anchors.npy) name",
    )
    args, overrides = common.parse(parser, argv)
    return common.run_cli(lambda: export(args, overrides), args.verbose, "ssd-jax-export")


def export(args, overrides: list[str]) -> None:
    from ssd_jax.errors import UserError
    from ssd_jax.outputs import check_output_path

    config = common.load_config(args.config, ["precision='fp32'", *overrides])
    calibration_files = _calibration_files(args)
    from ssd_jax.export.jax_export import metadata_path
    from ssd_jax.export.onnx_export import anchors_path

    for path in (args.out, metadata_path(args.out), anchors_path(args.out)):
        check_output_path(path, overwrite=args.overwrite)
    from ssd_jax.detector import Detector
    from ssd_jax.export import export as export_model

    detector = Detector.from_checkpoint(config, args.checkpoint)
    start = time.perf_counter()
    options = {}
    if calibration_files:
        options = {
            "quantize": args.quantize,
            "calibration": _calibration_batches(calibration_files, config.input_size),
        }
    try:
        written = export_model(
            detector,
            args.out,
            args.format,
            raw=args.raw,
            platforms=tuple(p for p in args.platforms.split(",") if p),
            **options,
        )
    except ImportError as e:
        raise UserError(
            f"{e.name or e} is not installed: pip install -r "
            "requirements-export.txt, then pip install --no-deps -r "
            "requirements-export-nodeps.txt (the README's Deploy section)"
        ) from e
    for what, path in written.items():
        print(f"wrote {what}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    quantized = (
        f" {args.quantize}, calibrated on {len(calibration_files)} images"
        if calibration_files
        else ""
    )
    print(
        f"exported {config.name} as {args.format}{' (raw)' if args.raw else ''}{quantized} in "
        f"{time.perf_counter() - start:.1f} s"
    )


def _calibration_files(args) -> list[str]:
    """The --calibration images to quantize with (none without --quantize int8); bad flags,
    a missing folder or one without images are user errors."""
    from ssd_jax.errors import InputFileError, UserError
    from ssd_jax.image_io import list_images

    if args.quantize == "none":
        if args.calibration:
            raise UserError("--calibration is for --quantize int8 or int8-openvino")
        return []
    formats = ("onnx",) if args.quantize == "int8-openvino" else ("tflite", "onnx")
    if args.format not in formats:
        raise UserError(f"--quantize {args.quantize} is for --format {' or '.join(formats)}")
    if not args.calibration:
        raise UserError(f"--quantize {args.quantize} needs --calibration DIR (a folder of images)")
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images {args.calibration_images}: must be at least 1")
    if not os.path.isdir(args.calibration):
        raise InputFileError(f"--calibration {args.calibration}: not a folder")
    files = list_images([args.calibration])[: args.calibration_images]
    if not files:
        raise InputFileError(f"--calibration {args.calibration}: no images in the folder")
    return files


def _calibration_batches(files: list[str], size: int):
    """One (images (1, S, S, 3) uint8, scale_factors (1, 2) float32) per file, read lazily."""
    from ssd_jax.image_io import read_image_rgb
    from ssd_jax.preprocess import resize_batch

    for path in files:
        yield resize_batch([read_image_rgb(path)], size)
