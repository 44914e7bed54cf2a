"""mmdetection 3.3.0's random SSD training pipeline, drawn many times on fixed inputs, for
tests/test_pipeline_distributions.py. Runs in mmdetection's environment (not ssd_jax's); see
../shared/mmdet_reference/README.md for how to build it:

    $(bash ../shared/mmdet_reference/setup.sh)/bin/python \
        scripts/make_pipeline_distribution_reference.py \
        tests/data/pipeline_distribution_reference.npz

(with the environment already built: ``/tmp/mmdet_ref/venv/bin/python scripts/...``).

The transforms are the ``train_pipeline`` of mmdetection's own ``configs/ssd/ssd300_coco.py``
(read from the installed package, built with mmdet's ``TRANSFORMS`` registry): Expand,
MinIoURandomCrop, Resize (300 × 300), RandomFlip, PhotoMetricDistortion; loading and packing
are left out. They run one after the other on the same 96 × 128 textured image with three
boxes, DRAWS times (``np.random.seed(SEED)`` once, then mmdetection's global stream), and each
draw records (lengths DRAWS):

- ``expand_ratio``: width after Expand / width before (1 when it did not expand);
- ``crop_area``: crop area / area before MinIoURandomCrop (1 when mode 1 kept the image);
- ``crop_aspect``: height / width of the image after MinIoURandomCrop, pixels;
- ``kept_boxes``: the number of boxes out of the pipeline;
- ``box_w``, ``box_h``, ``box_cx``: the first box out of the pipeline, width, height and centre
  x, as fractions of the 300 px output;
- ``flipped``: RandomFlip's ``results['flip']``.

PhotoMetricDistortion (the same configured object) also runs DRAWS times on its own on
``pipeline_statistics.photo_image()`` (gray texture beside a warm colour, so that brightness,
contrast, saturation, hue and the channel swap all show); ``pipeline_statistics.photo_statistics``
of each output are stored under their names (``photo_shift_r``, ... ``photo_saturation``).

mmdetection holds BGR images: the inputs go in as BGR and the outputs are read back as RGB. The
inputs are stored too (``image``: uint8 RGB (96, 128, 3); ``boxes``: float32 (3, 4) xyxy
pixels; ``photo_image``: uint8 RGB (32, 32, 3)), with ``input_size`` (300). The
statistics are float64 (``kept_boxes`` int32, ``flipped`` bool).
"""

import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import mmdet  # noqa: E402
import numpy as np  # noqa: E402
from mmdet.registry import TRANSFORMS  # noqa: E402
from mmdet.structures.bbox import HorizontalBoxes  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402

from pipeline_statistics import photo_image, photo_statistics  # noqa: E402

DRAWS = 2000
SEED = 0
CONFIG = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "ssd", "ssd300_coco.py")
PIPELINE = ["Expand", "MinIoURandomCrop", "Resize", "RandomFlip", "PhotoMetricDistortion"]


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test inputs: RGB textured image (96, 128, 3), three xyxy boxes, photometric image."""
    image = np.random.default_rng(SEED).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    boxes = np.array([[10, 12, 50, 60], [60, 30, 120, 90], [30, 40, 70, 70]], np.float32)
    return image, boxes, photo_image(SEED)


def main() -> None:
    register_all_modules()
    cfg = Config.fromfile(CONFIG)
    steps = [TRANSFORMS.build(t) for t in cfg.train_pipeline if t["type"] in PIPELINE]
    assert [type(s).__name__ for s in steps] == PIPELINE, steps
    expand, crop, resize, flip, photometric = steps
    size = int(cfg.input_size)

    image, boxes, photo = inputs()
    np.random.seed(SEED)
    stats: dict[str, list] = collections.defaultdict(list)
    for _ in range(DRAWS):
        r = {
            "img": np.ascontiguousarray(image[..., ::-1]),
            "img_shape": image.shape[:2],
            "ori_shape": image.shape[:2],
            "gt_bboxes": HorizontalBoxes(boxes.copy()),
            "gt_bboxes_labels": np.arange(len(boxes), dtype=np.int64),
            "gt_ignore_flags": np.zeros(len(boxes), bool),
        }
        r = expand.transform(r)
        h1, w1 = r["img"].shape[:2]
        r = crop.transform(r)
        h2, w2 = r["img"].shape[:2]
        r = flip.transform(resize.transform(r))
        r = photometric.transform(r)
        assert r["img"].shape == (size, size, 3)
        out = r["gt_bboxes"].numpy()
        stats["expand_ratio"].append(w1 / image.shape[1])
        stats["crop_area"].append(h2 * w2 / (h1 * w1))
        stats["crop_aspect"].append(h2 / w2)
        stats["kept_boxes"].append(len(out))
        stats["box_w"].append((out[0, 2] - out[0, 0]) / size)
        stats["box_h"].append((out[0, 3] - out[0, 1]) / size)
        stats["box_cx"].append((out[0, 0] + out[0, 2]) / 2 / size)
        stats["flipped"].append(bool(r["flip"]))

    photo_bgr = np.ascontiguousarray(photo[..., ::-1])
    for _ in range(DRAWS):
        out = photometric.transform({"img": photo_bgr.copy()})["img"][..., ::-1]
        for k, v in photo_statistics(out, photo).items():
            stats[k].append(v)

    arrays = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    arrays["kept_boxes"] = np.asarray(stats["kept_boxes"], np.int32)
    arrays["flipped"] = np.asarray(stats["flipped"], bool)
    np.savez_compressed(
        sys.argv[1],
        image=image,
        boxes=boxes,
        photo_image=photo,
        input_size=np.int32(size),
        **arrays,
    )
    print({k: round(float(np.mean(v)), 4) for k, v in arrays.items()})


if __name__ == "__main__":
    main()
