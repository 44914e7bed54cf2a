"""Export a config's SSD with its weights for serving.

    ssd-jax-export --config ssdlite_mobilenetv2_320_coco --checkpoint model.pth \\
        --format onnx --out ssdlite.onnx [--raw]

--format onnx   one .onnx file (jax2onnx + ONNX NonMaxSuppression), for ONNX Runtime/OpenVINO.
--format jax    a jax.export artifact (serialized StableHLO with the weights) and PATH.json.
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
        choices=("onnx", "jax"),
        help="onnx (ONNX Runtime, OpenVINO) or jax (jax.export artifact)",
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
    from ssd_jax.export.jax_export import metadata_path
    from ssd_jax.export.onnx_export import anchors_path

    for path in (args.out, metadata_path(args.out), anchors_path(args.out)):
        check_output_path(path, overwrite=args.overwrite)
    from ssd_jax.detector import Detector
    from ssd_jax.export import export as export_model

    detector = Detector.from_checkpoint(config, args.checkpoint)
    start = time.perf_counter()
    try:
        written = export_model(
            detector,
            args.out,
            args.format,
            raw=args.raw,
            platforms=tuple(p for p in args.platforms.split(",") if p),
        )
    except ImportError as e:
        raise UserError(
            f"{e.name or e} is not installed: pip install -r "
            "requirements-export.txt, then pip install --no-deps -r "
            "requirements-export-nodeps.txt (the README's Deploy section)"
        ) from e
    for what, path in written.items():
        print(f"wrote {what}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(
        f"exported {config.name} as {args.format}{' (raw)' if args.raw else ''} in "
        f"{time.perf_counter() - start:.1f} s"
    )
