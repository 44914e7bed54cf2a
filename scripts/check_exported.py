"""A jax.export detection artifact run on the default device against mmdetection's reference
detections of a fixture (the fixtures README's matching rule). For scripts/gpu_benchmark.sh.

    python scripts/check_exported.py ssdlite.jaxexport \
        ../shared/fixtures/ssdlite_mobilenetv2_320_coco
"""

import sys

import jax
import numpy as np

from ssd_jax import box_ops
from ssd_jax.export import runtime


def matched(ref, results) -> list[int]:
    """Per image, how many of the fixture's reference detections ``results`` match (same label,
    IoU ≥ 0.99, score within 1e-4)."""
    counts = []
    for i, ours in enumerate(results):
        boxes, scores, labels = (ref[f"det_{k}_{i}"] for k in ("bboxes", "scores", "labels"))
        iou = np.asarray(box_ops.pairwise_iou(boxes, ours["boxes"]))
        ok = (
            (ours["labels"][None] == labels[:, None])
            & (iou >= 0.99)
            & (np.abs(ours["scores"][None] - scores[:, None]) <= 1e-4)
        )
        counts.append(int(ok.any(axis=1).sum()))
    return counts


def main(path: str, fixture: str) -> None:
    ref = np.load(f"{fixture}/reference.npz")
    model = runtime.load(path, "jax")
    results = runtime.predict(model, [ref["image_0"], ref["image_1"]])
    print("device", jax.devices()[0].platform, jax.devices()[0].device_kind)
    for i, (count, ours) in enumerate(zip(matched(ref, results), results)):
        print(
            f"image {i}: {count} of {len(ref[f'det_scores_{i}'])} reference detections matched; "
            f"{len(ours['scores'])} ours"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
