"""Detection metrics as mmdetection computes them: COCO (pycocotools COCOeval) and Pascal VOC.

Batched, device-sharded inference plus these metrics (``evaluate_coco``, ``evaluate_voc``,
``evaluate_checkpoint``) live in ``ssd_jax.evaluation.runner``, imported explicitly because it
pulls in JAX, the model and the data pipeline.
"""

from ssd_jax.evaluation.coco import (
    coco_evaluate,
    detections_to_coco_results,
    format_metrics_table,
    write_results_json,
)
from ssd_jax.evaluation.voc import voc_map

__all__ = [
    "coco_evaluate",
    "detections_to_coco_results",
    "format_metrics_table",
    "voc_map",
    "write_results_json",
]
