"""Evaluate a detector: ``python eval.py --config configs/ssd300_coco.py --checkpoint CKPT``.

CKPT is an mmdetection ``.pth`` (imported on the fly) or an orbax directory (``train.py``'s
``workdir/checkpoints`` or ``best``, or ``python -m ssd_jax.porting`` output). The data is the
config's val split unless flags name another:

    --ann_file A --img_dir D            COCO-format annotations and images
    --data tfds [--tfds_name coco/2017:1.1.0 --tfds_split validation]
    --data voc --voc_root data [--voc_split test --voc_year 2007] [--voc_mode 11points]

The class list comes from the data; the checkpoint must have been trained for as many classes.
The metric is ``--metric``, else ``config.evaluation.metric``, else 'voc' for VOC data and
'coco' otherwise (mmdetection's CocoMetric: COCOeval with max_dets 100/300/1000, or its
VOCMetric). Prints the metrics and writes ``OUT/metrics.json`` (nan → null) and
``OUT/results.bbox.json`` (COCO results format). Overrides: ``--config.test.score_thr=0.05``.
Multi-host: as ``train.py`` (every process runs the same command; each infers its share).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Sequence

from absl import app, flags
from ml_collections import config_flags

from ssd_jax.training.init import maybe_initialize_distributed, setup_logging

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
    """Define eval.py's flags on ``fv``."""
    config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)",
                                    lock_config=False, flag_values=fv)
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, bool: flags.DEFINE_bool}
    for name, default, help_text in (
            ("checkpoint", None, "mmdetection .pth file or orbax checkpoint directory"),
            ("ann_file", "", "COCO-format annotation file (default: config.data.val_ann_file)"),
            ("img_dir", "", "image folder of --ann_file (default: config.data.val_img_dir)"),
            ("data", "", "data source: coco, tfds or voc (default: config.data.source)"),
            ("tfds_name", "", "TFDS dataset (default: config.data.tfds_name)"),
            ("tfds_split", "validation", "TFDS split"),
            ("voc_root", "", "folder holding VOCdevkit (with --data voc)"),
            ("voc_split", "", "VOC image set (default: test)"),
            ("voc_year", "", "VOC year (default: 2007)"),
            ("metric", "", "coco or voc (default: config.evaluation.metric or by the data)"),
            ("voc_mode", "", "VOC AP: area or 11points (default: config or area)"),
            ("batch_size", 0, "images per batch per process (default: config.test.batch_size)"),
            ("num_workers", -1, "data loader processes (default: config.data.workers)"),
            ("out", "", "output folder (default: runs/eval/<config.name>)"),
            ("progress", True, "show a progress bar"),
            ("coordinator", "", "jax.distributed coordinator address HOST:PORT"),
            ("num_processes", 0, "number of processes (with --coordinator)"),
            ("process_id", -1, "this process's index (with --coordinator)")):
        kind = type(default) if default is not None else str
        define[kind](name, default, help_text, flag_values=fv)
    flags.mark_flags_as_required(["config", "checkpoint"], flag_values=fv)


def evaluate_from_flags(fv: flags.FlagValues) -> dict[str, Any]:
    """Build the source from ``fv``, evaluate, print and write; returns the metrics."""
    from ssd_jax.evaluation.runner import build_eval_source, evaluate_checkpoint

    config = fv.config
    source = build_eval_source(
        config, data=fv.data, ann_file=fv.ann_file, img_dir=fv.img_dir, tfds_name=fv.tfds_name,
        tfds_split=fv.tfds_split, voc_root=fv.voc_root, voc_split=fv.voc_split,
        voc_year=fv.voc_year)
    workers = fv.num_workers if fv.num_workers >= 0 else config.data.get("workers", 0)
    out = fv.out or os.path.join("runs", "eval", config.name)
    return evaluate_checkpoint(config, fv.checkpoint, source, out, metric=fv.metric,
                               voc_mode=fv.voc_mode, batch_size=fv.batch_size,
                               num_workers=workers, progress=fv.progress)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    setup_logging()
    maybe_initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    try:
        evaluate_from_flags(FLAGS)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(argv: Sequence[str]) -> dict[str, Any]:
    """In-process entry (tests, notebooks): ``argv`` as on the command line, program name
    first. Parses into fresh flags (``FLAGS`` is left alone), evaluates and returns the metrics;
    errors are raised, not turned into an exit status."""
    fv = flags.FlagValues()
    define_flags(fv)
    with _sys_argv(argv):  # config_flags reads --config.* overrides from sys.argv
        fv(list(argv))
    return evaluate_from_flags(fv)


@contextlib.contextmanager
def _sys_argv(argv: Sequence[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = saved


if __name__ == "__main__":
    define_flags(FLAGS)  # only when run: importing eval.py leaves the global flags alone
    app.run(main)
