"""Run a detector on image files; write COCO-style results and drawn images.

    ssd-jax-predict --config configs/ssd300_coco.py --checkpoint ssd300_coco.pth \\
        photos/ photo.jpg --out runs/predict [--score-thr 0.3] [--ann-file instances.json]

Writes ``OUT/detections.json`` (every detection in COCO results format: ``bbox`` [x, y, w, h] in
original pixels, ``category_id`` the data set's category id, ``image_id`` from ``--ann-file`` by
file name, else the file name's number when it is one, as COCO's ``000000397133.jpg``, else the
file's index) and ``OUT/<image stem>.png`` with the detections scoring above ``--score-thr``
drawn. Nothing is replaced — an input or an earlier output — without ``--overwrite``; when OUT
lies among the inputs, the files an earlier run wrote there are not read as inputs.
Unreadable images are reported and skipped. Exit status: 0 on success, 1 if an image could not
be read, 2 for bad arguments or inputs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssd_jax import host_memory
from ssd_jax.cli import common

RESULTS_FILE = "detections.json"
MANIFEST = ".ssd_jax_predict.json"  # the files a run wrote into OUT


def main(argv: Sequence[str] | None = None) -> int:
    host_memory.keep_freed_memory()
    parser = common.make_parser("ssd-jax-predict", __doc__)
    common.add_config_flags(parser)
    parser.add_argument(
        "--checkpoint", required=True, help="mmdetection .pth file or orbax checkpoint directory"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files and/or folders of images (not recursive)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--score-thr",
        type=float,
        default=0.3,
        help="draw detections scoring above this (detections.json has all)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="images per forward pass (default: the config's test.batch_size)",
    )
    parser.add_argument(
        "--ann-file",
        default="",
        help="COCO annotation file whose image ids (matched by file name) the results should carry",
    )
    common.add_backend_flag(parser, "run")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in --out (earlier outputs, or inputs)",
    )
    args, overrides = common.parse(parser, argv)
    if args.batch_size < 0:
        parser.error("--batch-size must be at least 1")
    return common.run_cli(lambda: predict(args, overrides), args.verbose, "ssd-jax-predict")


def predict(args: Any, overrides: list[str]) -> int:
    from ssd_jax.errors import InputFileError
    from ssd_jax.image_io import list_images
    from ssd_jax.outputs import check_outputs

    config = common.load_config(args.config, overrides)
    if not os.path.exists(args.checkpoint):
        raise InputFileError(f"checkpoint not found: {args.checkpoint}")
    own = _earlier_outputs(args.out)
    paths = [p for p in list_images(args.inputs) if os.path.abspath(p) not in own]
    if not paths:
        raise InputFileError(f"no images found in {' '.join(args.inputs)}")
    stems = output_stems(paths)
    check_outputs(
        args.out,
        [RESULTS_FILE] + [s + ".png" for s in stems],
        overwrite=args.overwrite,
        inputs=paths,
    )
    image_ids = image_ids_for(paths, args.ann_file)
    if args.backend == "jax":
        from ssd_jax.detector import Detector  # JAX: after the checks above

        det = Detector.from_checkpoint(config, args.checkpoint)
    else:
        from ssd_jax.export import runtime

        det = runtime.ExportedDetector(runtime.load(args.checkpoint, args.backend))
        config.class_names = det.class_names
        config.category_ids = det.category_ids or config.get("category_ids", ())
    category_ids = _category_ids(config, args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    batch_size = min(args.batch_size or config.test.batch_size, len(paths))
    results, failed, written = predict_files(
        det, paths, stems, image_ids, category_ids, args.out, batch_size, args.score_thr
    )
    with open(os.path.join(args.out, RESULTS_FILE), "w") as f:
        json.dump(results, f)
    _record_outputs(args.out, [RESULTS_FILE] + written)
    print(
        f"{len(results)} detections on {len(paths) - failed} images written to {args.out}"
        + (f"; {failed} unreadable image(s) skipped" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def predict_files(
    det: Any,
    paths: Sequence[str],
    stems: Sequence[str],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    out_dir: str,
    batch_size: int,
    score_thr: float,
) -> tuple[list[dict], int, list[str]]:
    """Detect on ``paths`` in batches, drawing each image into ``out_dir/<stem>.png``.

    Returns the COCO-style results of all images, the number of images that could not be read
    and the names of the pictures written.
    """
    from PIL import Image
    from tqdm import tqdm

    from ssd_jax.image_io import ImageReadError, read_image_rgb
    from ssd_jax.progress import progress
    from ssd_jax.visualize import draw_detections

    results: list[dict] = []
    written: list[str] = []
    failed = 0
    bar = progress(len(paths), desc="predict", unit="img")
    try:
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
                results.extend(
                    coco_results(dets, image_ids[i], paths[i], det.class_names, category_ids)
                )
                drawn = draw_detections(
                    image, dets["boxes"], dets["scores"], dets["labels"], det.class_names, score_thr
                )
                Image.fromarray(drawn).save(os.path.join(out_dir, stems[i] + ".png"))
                written.append(stems[i] + ".png")
            bar.update(min(batch_size, len(paths) - start))
    finally:
        bar.close()
    return results, failed, written


def detect(det: Any, images: list[np.ndarray], batch_size: int) -> list[dict]:
    """``det.predict`` on up to ``batch_size`` images, padded to ``batch_size`` (one compile)."""
    if not images:
        return []
    padded = images + [images[-1]] * (batch_size - len(images))
    return det.predict(padded, batch_size)[: len(images)]


def coco_results(
    dets: dict[str, np.ndarray],
    image_id: int,
    file_name: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> list[dict]:
    """One image's detections (xyxy pixels) as COCO results entries (bbox [x, y, w, h],
    ``category_id`` = ``category_ids[label]``)."""
    from ssd_jax.evaluation.coco import xyxy_to_xywh

    return [
        {
            "file_name": file_name,
            "image_id": int(image_id),
            "bbox": xyxy_to_xywh(box),
            "score": float(score),
            "category_id": int(category_ids[int(label)]),
            "category_name": class_names[int(label)],
        }
        for box, score, label in zip(dets["boxes"], dets["scores"], dets["labels"])
    ]


def image_ids_for(paths: Sequence[str], ann_file: str = "") -> list[int]:
    """COCO image ids of ``paths``: from ``ann_file`` by file name; else the number a file
    stem is (``000000397133`` → 397133) when every stem is one; else the index."""
    names = [os.path.basename(p) for p in paths]
    if ann_file:
        from ssd_jax.data.coco import CocoFormatError, read_json_object
        from ssd_jax.errors import InputFileError

        if not os.path.isfile(ann_file):
            raise InputFileError(f"annotation file not found: {ann_file}")
        images = read_json_object(ann_file).get("images")
        if not isinstance(images, list) or not all(
            isinstance(im, dict)
            and isinstance(im.get("file_name"), str)
            and isinstance(im.get("id"), int)
            for im in images
        ):
            raise CocoFormatError(
                f"{ann_file}: 'images' is not a list of objects with a file_name and an integer id"
            )
        by_name = {os.path.basename(im["file_name"]): im["id"] for im in images}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputFileError(
                f"{ann_file} lists no image named {', '.join(missing[:5])}"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        return [int(by_name[n]) for n in names]
    stems = [os.path.splitext(n)[0] for n in names]
    if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(paths)))


def _category_ids(config: Any, checkpoint: str) -> list[int]:
    """The category id of each label: an orbax checkpoint's own (trained on that data), else
    the config's ``category_ids``, else label + 1."""
    if os.path.isdir(checkpoint):
        from ssd_jax import checkpoints

        _, meta = checkpoints.load_variables(checkpoint)
        ids = meta.get("category_ids")
        if ids and len(ids) == len(config.class_names):
            return [int(i) for i in ids]
    ids = config.get("category_ids", None)
    if ids and len(ids) == len(config.class_names):
        return [int(i) for i in ids]
    return list(range(1, len(config.class_names) + 1))


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


def _earlier_outputs(out_dir: str) -> set[str]:
    """Absolute paths of the files earlier runs wrote into ``out_dir`` (its manifest)."""
    try:
        with open(os.path.join(out_dir, MANIFEST)) as f:
            names = json.load(f)
    except (OSError, ValueError):
        return set()
    return {os.path.abspath(os.path.join(out_dir, n)) for n in names if isinstance(n, str)}


def _record_outputs(out_dir: str, names: list[str]) -> None:
    known = {os.path.basename(p) for p in _earlier_outputs(out_dir)}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(sorted(known | set(names)), f)
