"""The embedded default end to end: synthetic data → training → evaluation → pictures.

    bash run_default.sh               # creates .venv and installs requirements.txt, then this
    python scripts/run_default.py     # the same, in an environment that has the requirements

Leaves in the workdir (default ``runs/shapes``): ``checkpoints/`` (orbax), ``metrics.jsonl``,
``final_metrics.json``, ``curves.png`` and ``val_detections/*.png``.

A reduced run (flags, or environment variables for ``run_default.sh``): ``--steps`` /
``RUN_DEFAULT_STEPS`` (training steps; 0 = the config's schedule), ``--num-train`` /
``RUN_DEFAULT_NUM_TRAIN`` and ``--num-val`` / ``RUN_DEFAULT_NUM_VAL`` (images generated),
``--workdir`` / ``RUN_DEFAULT_WORKDIR``, ``--data`` / ``RUN_DEFAULT_DATA``, ``--no-eval`` /
``RUN_DEFAULT_EVAL=0`` (no separate ``eval.py`` pass: the metrics of training's final
validation are reported). ``--config.KEY=VALUE`` arguments change the config of training,
evaluation and pictures alike, after the data paths, e.g. ``bash run_default.sh
--config.optimizer.lr=0.1``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/ssdlite_shapes.py"
DEFAULT_DATA = "data/shapes"  # the paths configs/ssdlite_shapes.py names
NUM_VAL_PICTURES = 8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=env("RUN_DEFAULT_WORKDIR", "runs/shapes"))
    p.add_argument("--data", default=env("RUN_DEFAULT_DATA", DEFAULT_DATA))
    p.add_argument("--num-train", type=int, default=int(env("RUN_DEFAULT_NUM_TRAIN", "3000")))
    p.add_argument("--num-val", type=int, default=int(env("RUN_DEFAULT_NUM_VAL", "200")))
    p.add_argument(
        "--steps",
        type=int,
        default=int(env("RUN_DEFAULT_STEPS", "0")),
        help="training steps (0: the config's schedule)",
    )
    p.add_argument(
        "--no-eval",
        dest="eval",
        action="store_false",
        default=env("RUN_DEFAULT_EVAL", "1") not in ("0", "", "false"),
        help="skip the eval.py pass over the final checkpoint",
    )
    from ssd_jax.cli.common import parse  # the tools' own --config.KEY=VALUE parsing

    args, overrides = parse(p, argv)
    args.config = overrides
    return args


def say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def data_ready(root: pathlib.Path, num_train: int, num_val: int) -> bool:
    """Both annotation files exist and list the requested numbers of images."""
    for split, count in (("train", num_train), ("val", num_val)):
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            return False
        try:
            if len(json.loads(ann.read_text())["images"]) != count:
                return False
        except (ValueError, KeyError):
            return False
    return True


def config_overrides(args: argparse.Namespace) -> list[str]:
    """``key=value`` overrides of the config: a non-default data folder or step count, then the
    ``--config.KEY=VALUE`` arguments."""
    out = []
    if os.path.normpath(args.data) != DEFAULT_DATA:
        d = pathlib.Path(args.data)
        out += [
            f"data.ann_file={d / 'annotations' / 'instances_train.json'}",
            f"data.img_dir={d / 'train'}",
            f"data.val_ann_file={d / 'annotations' / 'instances_val.json'}",
            f"data.val_img_dir={d / 'val'}",
        ]
    if args.steps:
        out.append(f"train.num_steps={args.steps}")
    return out + args.config


def train_images_per_s(metrics_path: pathlib.Path) -> float | None:
    """Median training throughput logged in metrics.jsonl, leaving out the first (compiling)
    interval."""
    rates = [
        row["images_per_s"]
        for row in map(json.loads, metrics_path.read_text().splitlines())
        if "images_per_s" in row
    ]
    return statistics.median(rates[1:]) if len(rates) > 1 else None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.chdir(REPO)
    start = time.time()
    load_start = os.getloadavg()
    timings: dict[str, float] = {}
    workdir = pathlib.Path(args.workdir)
    data = pathlib.Path(args.data)
    overrides = config_overrides(args)
    flags = [f"--config.{o}" for o in overrides]

    say(f"1/5 synthetic shapes data in {data}")
    t = time.time()
    if data_ready(data, args.num_train, args.num_val):
        print(f"already there ({args.num_train} train + {args.num_val} val images)")
    else:
        run(
            [
                sys.executable,
                "-m",
                "ssd_jax.data.synthetic",
                str(data),
                "--num-train",
                str(args.num_train),
                "--num-val",
                str(args.num_val),
            ]
        )
    timings["data_s"] = time.time() - t

    final_path = workdir / "final_metrics.json"
    if final_path.is_file():
        print(
            f"\n{workdir} already holds a finished run (delete it, or set RUN_DEFAULT_WORKDIR, "
            f"to train again); its summary, {final_path}:"
        )
        print(final_path.read_text())
        return

    say(f"2/5 training SSDLite ({CONFIG}) in {workdir}")
    t = time.time()
    ckpt_dir = workdir / "checkpoints"
    resume = ["--resume"] if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()) else []
    if resume:
        print(f"continuing the interrupted run in {workdir}")
    elif workdir.is_dir() and any(workdir.iterdir()):  # cut before its first checkpoint
        resume = ["--overwrite"]  # train.py moves it aside (and names where) and starts again
    run(
        [sys.executable, "train.py", "--config", CONFIG, "--workdir", str(workdir), *resume, *flags]
    )
    timings["train_s"] = time.time() - t

    from ssd_jax import jsonio, provenance, visualize

    metrics_path = workdir / "metrics.jsonl"
    metrics = jsonio.last_validation(metrics_path)
    source = "validation at the end of training"
    eval_dir = workdir / "eval"
    say("3/5 evaluating the final checkpoint on the val split")
    t = time.time()
    if args.eval and (REPO / "eval.py").is_file():
        run(
            [
                sys.executable,
                "eval.py",
                "--config",
                CONFIG,
                "--checkpoint",
                str(ckpt_dir),
                "--out",
                str(eval_dir),
                "--overwrite",
                *flags,
            ]
        )
        evaluated = _read_eval_metrics(eval_dir)
        if evaluated:
            metrics, source = evaluated, "eval.py"
    else:
        print(
            "using the metrics of the validation at the end of training"
            + ("" if args.eval else " (--no-eval)")
        )
    timings["eval_s"] = time.time() - t

    say(f"4/5 curves and val images with detections in {workdir}")
    t = time.time()
    visualize.write_curves(jsonio.history_from_metrics(metrics_path), str(workdir / "curves.png"))
    pictures = _write_pictures(ckpt_dir, overrides, workdir / "val_detections")
    timings["pictures_s"] = time.time() - t
    timings["total_s"] = time.time() - start

    say("5/5 summary")
    summary = {
        "mAP@0.5": metrics.get("bbox_mAP_50"),
        "mAP": metrics.get("bbox_mAP"),
        "metrics_from": source,
        "metrics": metrics,
        "config": CONFIG,
        "train_images_per_s": train_images_per_s(metrics_path),
        "timings_s": timings,
        "machine": {
            "cpu": provenance.cpu_model(),
            "flags": provenance.cpu_flags(),
            "cpus": os.cpu_count(),
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
        },
        "versions": provenance.versions(),
        "commit": provenance.git_commit(REPO),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
    }
    jsonio.write_json(final_path, summary)
    print(
        f"mAP@0.5 {_fmt(summary['mAP@0.5'])}, mAP {_fmt(summary['mAP'])} ({source}); "
        f"training {_fmt(summary['train_images_per_s'], 1)} images/s; "
        f"total {format_seconds(timings['total_s'])}"
    )
    for path in (ckpt_dir, metrics_path, final_path, workdir / "curves.png"):
        print(f"  {path}")
    print(f"  {workdir / 'val_detections'}/ ({len(pictures)} PNGs)")


def _read_eval_metrics(eval_dir: pathlib.Path) -> dict[str, Any]:
    """The COCO metrics eval.py wrote (the first JSON under ``eval_dir`` with bbox_mAP_50)."""
    for path in sorted(eval_dir.glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict):
            for candidate in (data, data.get("metrics"), data.get("bbox")):
                if isinstance(candidate, dict) and "bbox_mAP_50" in candidate:
                    return dict(candidate)
    print(f"no metrics JSON with bbox_mAP_50 found under {eval_dir}")
    return {}


def _write_pictures(
    ckpt_dir: pathlib.Path, overrides: list[str], out_dir: pathlib.Path
) -> list[str]:
    from ssd_jax import Detector, visualize
    from ssd_jax.config import load_config
    from ssd_jax.data.coco import CocoSource

    config = load_config(CONFIG, overrides)
    detector = Detector.from_checkpoint(config, ckpt_dir)
    source = CocoSource(config.data.val_ann_file, config.data.val_img_dir)
    return visualize.write_val_detections(detector, source, out_dir, n=NUM_VAL_PICTURES)


def format_seconds(seconds: float) -> str:
    """ "12 min 5 s" / "48 s"."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
