"""Convert an mmdetection ``.pth`` into an orbax checkpoint for a config.

    python -m ssd_jax.porting IN.pth OUT_DIR --config configs/ssd300_coco.py
"""
from __future__ import annotations

import argparse
import sys

from ssd_jax import checkpoints
from ssd_jax.config import load_config
from ssd_jax.detector import Detector
from ssd_jax.porting import (CheckpointFormatError, CheckpointMismatchError,
                             UnsafeCheckpointError, load_checkpoint_variables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_jax.porting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="mmdetection .pth (zip or legacy format, .xz accepted)")
    parser.add_argument("out_dir", help="orbax checkpoint directory to write")
    parser.add_argument("--config", required=True, help="config file, e.g. configs/ssd300_coco.py")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(args.config, overrides)
    det = Detector(config)
    try:
        variables = load_checkpoint_variables(args.checkpoint, det.variables)
    except (CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = checkpoints.save_variables(args.out_dir, variables, {
        "config": config.name, "class_names": list(config.class_names), "source": args.checkpoint})
    print(f"wrote {out} ({config.name}, {len(config.class_names)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
