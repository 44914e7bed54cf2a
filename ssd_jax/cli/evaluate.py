"""Evaluate a detector: ``ssd-jax-eval --config configs/ssd300_coco.py --checkpoint CKPT``.

CKPT is an mmdetection ``.pth`` (imported on the fly) or an orbax directory (``ssd-jax-train``'s
``WORKDIR/checkpoints`` or ``best``, or ``ssd-jax-import`` output). The data is the config's val
split unless flags name another:

    --ann-file A --img-dir D            COCO-format annotations and images
    --data tfds [--tfds-name coco/2017:1.1.0 --tfds-split validation]
    --data voc --voc-root data [--voc-split test --voc-year 2007] [--voc-mode 11points]

The class list comes from the data; the checkpoint must have been trained for as many classes.
The metric is ``--metric``, else ``config.evaluation.metric``, else 'voc' for VOC data and 'coco'
otherwise (mmdetection's CocoMetric: COCOeval with max_dets 100/300/1000, or its VOCMetric).
Prints the metrics and writes ``OUT/metrics.json`` (nan → null) and ``OUT/results.bbox.json``
(COCO results format with the data set's image and category ids); existing files are not
replaced without ``--overwrite``. Multi-host: as ``ssd-jax-train``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from ssd_jax import host_memory
from ssd_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    parser = common.make_parser("ssd-jax-eval", __doc__)
    common.add_config_flags(parser)
    parser.add_argument(
        "--checkpoint", required=True, help="mmdetection .pth file or orbax checkpoint directory"
    )
    parser.add_argument(
        "--ann-file",
        default="",
        help="COCO-format annotation file (default: config.data.val_ann_file)",
    )
    parser.add_argument(
        "--img-dir",
        default="",
        help="image folder of --ann-file (default: config.data.val_img_dir)",
    )
    parser.add_argument(
        "--data",
        default="",
        choices=("", "coco", "tfds", "voc"),
        help="data source (default: config.data.source)",
    )
    parser.add_argument(
        "--tfds-name", default="", help="TFDS dataset (default: config.data.tfds_name)"
    )
    parser.add_argument("--tfds-split", default="", help="TFDS split (default: validation)")
    parser.add_argument("--voc-root", default="", help="folder holding VOCdevkit (--data voc)")
    parser.add_argument("--voc-split", default="", help="VOC image set (default: test)")
    parser.add_argument("--voc-year", default="", help="VOC year (default: 2007)")
    parser.add_argument(
        "--metric",
        default="",
        choices=("", "coco", "voc"),
        help="coco or voc (default: config.evaluation.metric, or by the data)",
    )
    parser.add_argument(
        "--voc-mode",
        default="",
        choices=("", "area", "11points"),
        help="VOC AP: area or 11points (default: config, or area)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="images per batch per process (default: config.test.batch_size)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=-1,
        help="data loader processes (default: config.data.workers)",
    )
    parser.add_argument(
        "--out", default="", help="output folder (default: runs/eval/<config name>)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace metrics.json / results.bbox.json already in --out",
    )
    common.add_backend_flag(parser, "evaluated")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_distributed_flags(parser)
    return parser


def evaluate(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (flags as on the command line), evaluate, print and write; returns the
    metrics. Errors are raised (the in-process entry for tests and notebooks)."""
    args, overrides = common.parse(build_parser(), argv)
    return _evaluate(args, overrides)


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from ssd_jax.data.sources import build_source
    from ssd_jax.errors import ConfigError, InputFileError

    config = common.load_config(args.config, overrides)
    if not os.path.exists(args.checkpoint):
        raise InputFileError(f"checkpoint not found: {args.checkpoint}")
    if args.batch_size < 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    source = build_source(
        config,
        "val",
        data=args.data,
        ann_file=args.ann_file,
        img_dir=args.img_dir,
        tfds_name=args.tfds_name,
        tfds_split=args.tfds_split,
        voc_root=args.voc_root,
        voc_split=args.voc_split,
        voc_year=args.voc_year,
        required=True,
    )
    workers = args.num_workers if args.num_workers >= 0 else config.data.get("workers", 0)
    out = args.out or os.path.join("runs", "eval", config.name)
    from ssd_jax.evaluation.evaluate import evaluate_checkpoint  # JAX: after the checks above

    return evaluate_checkpoint(
        config,
        args.checkpoint,
        source,
        out,
        metric=args.metric,
        voc_mode=args.voc_mode,
        batch_size=args.batch_size,
        num_workers=workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        backend=args.backend,
    )


def main(argv: Sequence[str] | None = None) -> int:
    host_memory.keep_freed_memory()
    args, overrides = common.parse(build_parser(), argv)

    def run() -> None:
        common.setup_logging(args.verbose)
        from ssd_jax.parallel import maybe_initialize_distributed

        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        _evaluate(args, overrides)

    return common.run_cli(run, args.verbose, "ssd-jax-eval")
