"""Run a detector on image files and write COCO-style results and drawn images.

    python predict.py --config configs/ssd300_coco.py --checkpoint ssd300_coco_xxx.pth \
        images/ photo.jpg --out runs/predict [--score-thr 0.3] [--batch-size 8] \
        [--config.test.score_thr=0.05]

Writes ``OUT/detections.json`` (every detection, COCO results format with ``bbox`` as
[x, y, w, h] in original pixels) and ``OUT/<image stem>.png`` with the detections scoring above
``--score-thr`` drawn. Unreadable images are reported on stderr and skipped.
Exit status: 0 on success, 1 if any image could not be read, 2 for bad arguments or inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ssd_jax import Detector
from ssd_jax.image_io import ImageReadError, list_images, read_image_rgb
from ssd_jax.visualize import draw_detections


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and the ``--config.key=value`` overrides (exits with status 2 on errors)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/*.py file")
    parser.add_argument("--checkpoint", required=True,
                        help="mmdetection .pth file or orbax checkpoint directory")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files and/or directories of images (not recursive)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--score-thr", type=float, default=0.3,
                        help="draw detections scoring above this (detections.json has all)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: the config's test.batch_size)")
    args, unknown = parser.parse_known_args(argv)
    bad = [a for a in unknown if not (a.startswith("--config.") and "=" in a)]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} "
                     "(config overrides are written --config.key=value)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args, unknown


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    args, overrides = parse_args(argv)
    try:
        paths = list_images(args.inputs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    try:
        det = Detector.from_checkpoint(args.config, args.checkpoint, overrides)
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    batch_size = min(args.batch_size or det.config.test.batch_size, len(paths))
    results, failed = predict_files(det, paths, args.out, batch_size, args.score_thr)
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump(results, f)
    print(f"{len(results)} detections on {len(paths) - failed} images written to {args.out}"
          + (f"; {failed} unreadable image(s) skipped" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def predict_files(det: Detector, paths: Sequence[str], out_dir: str, batch_size: int,
                  score_thr: float) -> tuple[list[dict], int]:
    """Detect on ``paths`` in batches, drawing each image into ``out_dir``.

    Returns the COCO-style results of all images (``image_id`` = index in ``paths``) and the
    number of images that could not be read.
    """
    stems = output_stems(paths)
    results: list[dict] = []
    failed = 0
    with tqdm(total=len(paths), unit="img", file=sys.stderr) as bar:
        for start in range(0, len(paths), batch_size):
            ids, images = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    images.append(read_image_rgb(paths[i]))
                    ids.append(i)
                except (ImageReadError, OSError) as e:
                    tqdm.write(f"skipping unreadable image: {e}", file=sys.stderr)
                    failed += 1
            for i, image, dets in zip(ids, images, detect(det, images, batch_size)):
                results.extend(coco_results(dets, i, paths[i], det.class_names))
                drawn = draw_detections(image, dets["boxes"], dets["scores"], dets["labels"],
                                        det.class_names, score_thr)
                Image.fromarray(drawn).save(os.path.join(out_dir, stems[i] + ".png"))
            bar.update(min(batch_size, len(paths) - start))
    return results, failed


def detect(det: Detector, images: list[np.ndarray], batch_size: int) -> list[dict]:
    """``det.predict`` on up to ``batch_size`` images, padded to ``batch_size`` (one compile)."""
    if not images:
        return []
    padded = images + [images[-1]] * (batch_size - len(images))
    return det.predict(padded, batch_size)[:len(images)]


def coco_results(dets: dict[str, np.ndarray], image_id: int, file_name: str,
                 class_names: Sequence[str]) -> list[dict]:
    """One image's detections (xyxy pixels) as COCO results entries (bbox [x, y, w, h])."""
    return [{"file_name": file_name, "image_id": image_id,
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
             "score": float(score), "category_id": int(label),
             "category_name": class_names[int(label)]}
            for (x1, y1, x2, y2), score, label in zip(dets["boxes"], dets["scores"],
                                                        dets["labels"])]


def output_stems(paths: Sequence[str]) -> list[str]:
    """File stems for the drawn images; repeated stems get ``_1``, ``_2``, ... appended."""
    stems, seen = [], set()
    for p in paths:
        stem = base = os.path.splitext(os.path.basename(p))[0]
        n = 0
        while stem in seen:
            n += 1
            stem = f"{base}_{n}"
        seen.add(stem)
        stems.append(stem)
    return stems


if __name__ == "__main__":
    sys.exit(main())
