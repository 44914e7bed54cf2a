"""Class-aware NMS and the final top-k as hand-written ONNX nodes, appended to a jax2onnx graph.

jax2onnx could lower ``postprocess.batched_nms`` (a ``lax.while_loop``) to an ONNX ``Loop``,
but runtimes have a native ``NonMaxSuppression``; its output has a data-dependent length, which
a traced JAX function cannot express, so this part is written as ONNX directly.

Input values (from ``graph.candidates``; B dynamic, K and C static):
  cand_boxes (B, K, 4) xyxy, cand_scores (B, K) (-1 = not a candidate), cand_labels (B, K) int32,
  cand_class_scores (B, C, K) (candidate k's score in row ``labels[k]``, -1 elsewhere).
Nodes:
  NonMaxSuppression per image and class (IoU > nms_iou suppresses, scores > 0 kept, at most
  max_per_img per class) → selected (S, 3) [b, c, k]; since each candidate k belongs to one
  class, a keep mask (B, K) is scattered from b·K + k (rows with b < 0, which some runtimes pad
  with, go to a spare slot); the kept scores' top max_per_img (TopK) then gives the output,
  exactly the first max_per_img boxes that greedy class-aware NMS keeps in score order.
Outputs: boxes (B, M, 4) float32, scores (B, M) float32, labels (B, M) int32 (-1 = padding),
  num_valid (B,) int32, with M = min(max_per_img, K); rows ≥ num_valid are zero / -1.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CANDIDATE_OUTPUTS = ("cand_boxes", "cand_scores", "cand_labels", "cand_class_scores")
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_valid")


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def append_nms(
    model: onnx.ModelProto,
    *,
    num_candidates: int,
    nms_iou: float,
    max_per_img: int,
    batch_dim: str = "B",
) -> onnx.ModelProto:
    """Replace the graph's candidate outputs by the detections (in place; returns ``model``)."""
    graph = model.graph
    names = [o.name for o in graph.output]
    if tuple(names) != CANDIDATE_OUTPUTS:
        raise ValueError(f"expected the graph outputs {CANDIDATE_OUTPUTS}, got {names}")
    m = min(max_per_img, num_candidates)
    p = "nms/"  # prefix of every value added here
    boxes, scores, labels, class_scores = CANDIDATE_OUTPUTS
    nodes = [
        _const(p + "max_out", np.array([max_per_img], np.int64)),
        _const(p + "iou", np.array([nms_iou], np.float32)),
        _const(p + "score_thr", np.array([0.0], np.float32)),  # valid candidates score > 0
        helper.make_node(
            "NonMaxSuppression",
            [boxes, class_scores, p + "max_out", p + "iou", p + "score_thr"],
            [p + "selected"],
            center_point_box=0,
        ),
        _const(p + "i0", np.array(0, np.int64)),
        _const(p + "i1", np.array(1, np.int64)),
        _const(p + "i2", np.array(2, np.int64)),
        helper.make_node("Gather", [p + "selected", p + "i0"], [p + "sel_b"], axis=1),
        helper.make_node("Gather", [p + "selected", p + "i2"], [p + "sel_k"], axis=1),
        # flat index b·K + k into a (B·K + 1,) mask; the last slot takes padding rows (b < 0).
        helper.make_node("Shape", [scores], [p + "bk_shape"]),
        helper.make_node("ReduceProd", [p + "bk_shape"], [p + "bk"], keepdims=1),
        helper.make_node("Gather", [p + "bk_shape", p + "i1"], [p + "k"]),
        helper.make_node("Mul", [p + "sel_b", p + "k"], [p + "sel_bk"]),
        helper.make_node("Add", [p + "sel_bk", p + "sel_k"], [p + "flat"]),
        helper.make_node("Less", [p + "sel_b", p + "i0"], [p + "is_pad"]),
        helper.make_node("Squeeze", [p + "bk"], [p + "bk_scalar"]),
        helper.make_node("Where", [p + "is_pad", p + "bk_scalar", p + "flat"], [p + "flat_safe"]),
        _const(p + "axis_last", np.array([-1], np.int64)),
        helper.make_node("Unsqueeze", [p + "flat_safe", p + "axis_last"], [p + "scatter_idx"]),
        _const(p + "one_i64", np.array([1], np.int64)),
        helper.make_node("Add", [p + "bk", p + "one_i64"], [p + "bk1"]),
        helper.make_node(
            "ConstantOfShape",
            [p + "bk1"],
            [p + "mask_zeros"],
            value=numpy_helper.from_array(np.array([0.0], np.float32)),
        ),
        helper.make_node("Shape", [p + "flat_safe"], [p + "s_shape"]),
        helper.make_node(
            "ConstantOfShape",
            [p + "s_shape"],
            [p + "mask_ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        helper.make_node(
            "ScatterND", [p + "mask_zeros", p + "scatter_idx", p + "mask_ones"], [p + "mask_flat1"]
        ),
        _const(p + "zero_1", np.array([0], np.int64)),
        helper.make_node("Slice", [p + "mask_flat1", p + "zero_1", p + "bk"], [p + "mask_flat"]),
        helper.make_node("Reshape", [p + "mask_flat", p + "bk_shape"], [p + "mask"]),
        _const(p + "half", np.array(0.5, np.float32)),
        helper.make_node("Greater", [p + "mask", p + "half"], [p + "kept"]),
        _const(p + "minus_one", np.array(-1.0, np.float32)),
        helper.make_node("Where", [p + "kept", scores, p + "minus_one"], [p + "kept_scores"]),
        # The max_per_img best kept candidates, highest score first.
        _const(p + "m", np.array([m], np.int64)),
        helper.make_node(
            "TopK",
            [p + "kept_scores", p + "m"],
            [p + "top_scores", p + "top_idx"],
            axis=1,
            largest=1,
            sorted=1,
        ),
        _const(p + "zero_f", np.array(0.0, np.float32)),
        helper.make_node("Greater", [p + "top_scores", p + "zero_f"], [p + "ok"]),
        helper.make_node("Unsqueeze", [p + "top_idx", p + "axis_last"], [p + "top_idx1"]),
        helper.make_node("GatherND", [boxes, p + "top_idx1"], [p + "top_boxes"], batch_dims=1),
        helper.make_node("GatherElements", [labels, p + "top_idx"], [p + "top_labels"], axis=1),
        helper.make_node("Unsqueeze", [p + "ok", p + "axis_last"], [p + "ok1"]),
        helper.make_node("Where", [p + "ok1", p + "top_boxes", p + "zero_f"], ["boxes"]),
        helper.make_node("Where", [p + "ok", p + "top_scores", p + "zero_f"], ["scores"]),
        _const(p + "minus_one_i", np.array(-1, np.int32)),
        helper.make_node("Where", [p + "ok", p + "top_labels", p + "minus_one_i"], ["labels"]),
        helper.make_node("Cast", [p + "ok"], [p + "ok_i"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", [p + "ok_i", p + "one_i64"], ["num_valid"], keepdims=0),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch_dim, m, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch_dim, m]),
            helper.make_tensor_value_info("labels", TensorProto.INT32, [batch_dim, m]),
            helper.make_tensor_value_info("num_valid", TensorProto.INT32, [batch_dim]),
        ]
    )
    return model
