"""Export a config's SSD with its weights for serving.

    python -m ssd_jax.export --config configs/ssdlite_mobilenetv2_320_coco.py \\
        --checkpoint model.pth --format onnx --out ssdlite.onnx [--raw] [key=value ...]

--format onnx: one .onnx file (jax2onnx + ONNX NonMaxSuppression), for ONNX Runtime/OpenVINO.
--format jax:  a jax.export artifact (serialized StableHLO with the weights) and PATH.json.
--raw:         the head outputs only, and the anchors as a .npy beside the model.
Extra ``key=value`` arguments override the config; the network is exported in float32
(``precision='fp32'`` unless overridden).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, e.g. configs/ssd300_coco.py")
    parser.add_argument("--checkpoint", required=True,
                        help="mmdetection .pth (.xz accepted) or orbax checkpoint directory")
    parser.add_argument("--format", required=True, choices=("onnx", "jax"))
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--raw", action="store_true",
                        help="export the head outputs only (+ anchors .npy), no decoding/NMS")
    parser.add_argument("--platforms", default="cpu,cuda",
                        help="--format jax: comma-separated jax platforms to lower for")
    args, overrides = parser.parse_known_args(argv)

    from ssd_jax import Detector  # after argparse: --help stays fast
    from ssd_jax.export import export
    detector = Detector.from_checkpoint(args.config, args.checkpoint,
                                        overrides=["precision='fp32'", *overrides])
    start = time.perf_counter()
    try:
        written = export(detector, args.out, args.format, raw=args.raw,
                         platforms=tuple(p for p in args.platforms.split(",") if p))
    except ImportError as e:
        print(f"error: {e.name or e} is not installed; pip install -r requirements-export.txt "
              "(see the README's Deploy section)", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    for what, path in written.items():
        print(f"wrote {what}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(f"exported {detector.config.get('name', '')} as {args.format}"
          f"{' (raw)' if args.raw else ''} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
