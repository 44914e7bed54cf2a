"""Detection metrics as mmdetection computes them: COCO (pycocotools COCOeval) and Pascal VOC."""
from ssd_jax.evaluation.coco import (coco_evaluate, detections_to_coco_results,
                                     format_metrics_table, write_results_json)
from ssd_jax.evaluation.voc import voc_map

__all__ = ["coco_evaluate", "detections_to_coco_results", "format_metrics_table", "voc_map",
           "write_results_json"]
