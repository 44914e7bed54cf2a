"""A jax.export detection artifact run on the default device against mmdetection's reference
detections of a fixture (the fixtures README's matching rule). For scripts/gpu_benchmark.sh.

    python scripts/check_exported.py ssdlite.jaxexport \
        ../shared/fixtures/ssdlite_mobilenetv2_320_coco
"""

import sys

import jax
import numpy as np

from ssd_jax.export import runtime


def main(path: str, fixture: str) -> None:
    ref = np.load(f"{fixture}/reference.npz")
    model = runtime.load(path, "jax")
    results = runtime.predict(model, [ref["image_0"], ref["image_1"]])
    print("device", jax.devices()[0].platform, jax.devices()[0].device_kind)
    for i, ours in enumerate(results):
        boxes, scores, labels = (ref[f"det_{k}_{i}"] for k in ("bboxes", "scores", "labels"))
        lt = np.maximum(boxes[:, None, :2], ours["boxes"][None, :, :2])
        rb = np.minimum(boxes[:, None, 2:], ours["boxes"][None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), -1)
        area = lambda b: np.prod(b[:, 2:] - b[:, :2], -1)  # noqa: E731
        iou = inter / (area(boxes)[:, None] + area(ours["boxes"])[None] - inter)
        ok = [
            np.any(
                (ours["labels"] == labels[j])
                & (iou[j] >= 0.99)
                & (np.abs(ours["scores"] - scores[j]) <= 1e-4)
            )
            for j in range(len(scores))
        ]
        print(
            f"image {i}: {sum(ok)} of {len(scores)} reference detections matched; "
            f"{len(ours['scores'])} ours"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
