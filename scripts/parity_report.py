"""The README's parity table, measured: every figure against mmdetection's fixtures, printed and
written as JSON (date, machine, versions).

    python scripts/parity_report.py [--fixtures ../shared/fixtures] [--out parity.json]
        [--skip-export]

For each fixture (SSD300, SSDLite; mmdetection 3.3.0, random weights): anchors, neck features
and head outputs (max abs diff / (1 + max abs reference), the fixtures README's measure),
preprocessing from the raw images (0–255 scale), detections from the raw images (how many of
the reference's are matched by its rule, the lowest IoU and largest score difference among the
matches), assignment, losses and gradients in float64 (network, input and ground truth in
float64) and in float32, and the exported models (ONNX in ONNX Runtime and OpenVINO,
jax.export): raw outputs and detections. SSD512 against tests/data/ssd512 (the same
fixture maker; its checkpoint rebuilt from the stored recipe, outputs at sampled cells): anchors,
neck features, head outputs, preprocessing, detections. The tests hold the same values to the
tolerances; this prints what they are. ``--only-ssd512`` measures SSD512 alone.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import pathlib
import platform
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {
    "ssd300_coco": REPO / "configs" / "ssd300_coco.py",
    "ssdlite_mobilenetv2_320_coco": REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py",
}


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).transpose(0, 2, 3, 1)


def rel_to_one_plus_max(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / (1 + np.abs(theirs).max()))


def rel_to_max(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def detection_match(results: list[dict], ref: dict) -> dict:
    """The fixtures README's rule, per image: reference detections matched (same label, IoU ≥
    0.99, score within 1e-4, each of ours used once), our extra detections, and over the matches
    the lowest IoU and the largest score difference."""
    matched, totals, extra, min_iou, max_dscore = [], [], [], 1.0, 0.0
    for i, ours in enumerate(results):
        boxes, scores, labels = (ref[f"det_{k}_{i}"] for k in ("bboxes", "scores", "labels"))
        iou = iou_matrix(boxes, ours["boxes"])
        used = np.zeros(len(ours["scores"]), bool)
        count = 0
        for j in range(len(scores)):
            ok = (
                (ours["labels"] == labels[j])
                & (iou[j] >= 0.99)
                & (np.abs(ours["scores"] - scores[j]) <= 1e-4)
                & ~used
            )
            if ok.any():
                k = int(np.flatnonzero(ok)[0])
                used[k] = True
                count += 1
                min_iou = min(min_iou, float(iou[j, k]))
                max_dscore = max(max_dscore, float(abs(ours["scores"][k] - scores[j])))
        matched.append(count)
        totals.append(len(scores))
        extra.append(int((~used).sum()))
    return {
        "matched": matched,
        "reference": totals,
        "extra": extra,
        "min_iou": min_iou,
        "max_score_diff": max_dscore,
    }


def ground_truth(ref: dict) -> tuple[list, list]:
    return [ref["gt_bboxes_0"], ref["gt_bboxes_1"]], [ref["gt_labels_0"], ref["gt_labels_1"]]


def train_pass(name: str, ckpt: pathlib.Path, ref: dict, meta: dict, precision: str) -> tuple:
    """Per-image losses, avg_factor and the fixture's ``grad_keys`` gradients (PyTorch layout)."""
    import jax
    import jax.numpy as jnp

    from ssd_jax import Detector, objective
    from ssd_jax.porting import read_state_dict
    from ssd_jax.porting.convert import torch_to_flax_name

    state_dict = read_state_dict(ckpt)[0]
    with jax.enable_x64(precision == "fp64"):
        det = Detector.from_checkpoint(CONFIGS[name], ckpt, overrides=[f"precision={precision!r}"])
        dtype = det.input_dtype
        boxes, labels = ground_truth(ref)
        x = nhwc(ref["inputs_nchw"]).astype(dtype)
        losses = det.loss(x, boxes, labels, train=True)
        b, l, v = objective.pad_ground_truth(boxes, labels, dtype=dtype)
        loss_fn = functools.partial(
            objective.ssd_loss,
            det.model,
            target_cfg=objective.target_settings(det.config),
            train=True,
        )

        def total(params):
            variables = {"params": params, "batch_stats": det.variables["batch_stats"]}
            out = loss_fn(variables, jnp.asarray(x), b, l, v, jnp.asarray(det.flat_anchors))
            return out.loss_cls.sum() + out.loss_bbox.sum()

        grads = jax.jit(jax.grad(total))(det.variables["params"])
        out = {}
        for key in meta["grad_keys"]:
            _, path = torch_to_flax_name(key, state_dict)
            g = grads
            for part in path:
                g = g[part]
            g = np.asarray(g, np.float64)
            out[key] = g.transpose(3, 2, 0, 1) if g.ndim == 4 else g
    return {k: np.asarray(v, np.float64) for k, v in losses.items()}, out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def eval_mode(det, ref: dict) -> dict:
    """Anchors, features, head outputs, preprocessing, detections, assignment."""
    import jax.numpy as jnp

    from ssd_jax import objective
    from ssd_jax.assigner import build_targets

    report = {}
    levels = sorted(k for k in ref if k.startswith("anchors_l"))
    report["anchors_max_abs_px"] = max(
        float(np.abs(a - ref[lv]).max()) for a, lv in zip(det.anchors(), levels, strict=True)
    )
    x = nhwc(ref["inputs_nchw"])
    feats = det.features(x)
    report["neck_features"] = max(
        rel_to_one_plus_max(f, nhwc(ref[f"neck_feat_l{k}"])) for k, f in enumerate(feats)
    )
    cls, box = det.forward(x)
    report["head_outputs"] = max(
        max(
            rel_to_one_plus_max(c, nhwc(ref[f"cls_scores_l{k}"])),
            rel_to_one_plus_max(b, nhwc(ref[f"bbox_preds_l{k}"])),
        )
        for k, (c, b) in enumerate(zip(cls, box, strict=True))
    )
    images = [ref["image_0"], ref["image_1"]]
    xp, _ = det.preprocess(images)
    diff = np.abs(np.asarray(xp) - x) * np.asarray(det.config.model.std, np.float32)
    report["preprocessing_mean_abs"] = float(diff.mean())
    report["preprocessing_max_abs"] = float(diff.max())
    report["detections"] = detection_match(det.predict(images), ref)
    cfg = objective.target_settings(det.config)
    boxes, labels = ground_truth(ref)
    b, l, v = objective.pad_ground_truth(boxes, labels, max_boxes=8)
    equal, target_err = True, 0.0
    for i in range(2):
        t = build_targets(jnp.asarray(det.flat_anchors), b[i], l[i], v[i], **cfg)
        equal &= bool(np.array_equal(np.asarray(t.labels), ref[f"assigned_labels_{i}"]))
        target_err = max(
            target_err, float(np.abs(np.asarray(t.box_targets) - ref[f"bbox_targets_{i}"]).max())
        )
    report["assigned_labels_equal"] = equal
    report["bbox_targets_max_abs"] = target_err
    return report


def ssd512(workdir: pathlib.Path) -> dict:
    """tests/test_parity_ssd512.py's comparisons, measured (needs torch to rebuild the
    checkpoint)."""
    sys.path.insert(0, str(REPO / "tests"))
    from seeded_checkpoint import write_checkpoint

    from ssd_jax import Detector

    data = REPO / "tests" / "data" / "ssd512"
    ref = dict(np.load(data / "reference.npz"))
    recipe = json.loads((data / "recipe.json").read_text())
    ckpt = write_checkpoint(recipe, workdir / "checkpoint.pth")
    det = Detector.from_checkpoint(REPO / "configs" / "ssd512_coco.py", ckpt)
    model = det.config.model
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    x = np.stack([(ref[f"resized_{i}"].astype(np.float32) - mean) / std for i in (0, 1)])

    def at(a, k):  # (N, H, W, C) at the reference's cells → (N, C, P)
        pos = ref[f"positions_l{k}"]
        return np.asarray(a)[:, pos[:, 0], pos[:, 1], :].transpose(0, 2, 1)

    cls, box = det.forward(x)
    feats = det.features(x)
    images = [ref["image_0"], ref["image_1"]]
    xp, _ = det.preprocess(images)
    diff = np.abs(np.asarray(xp) - x) * std
    return {
        "reference": "tests/data/ssd512 (scripts/make_ssd512_reference.py)",
        "anchors_max_abs_px": max(
            float(np.abs(a - ref[f"anchors_l{k}"]).max()) for k, a in enumerate(det.anchors())
        ),
        "neck_features": max(
            rel_to_one_plus_max(at(f, k), ref[f"neck_feat_l{k}"]) for k, f in enumerate(feats)
        ),
        "head_outputs": max(
            max(
                rel_to_one_plus_max(at(c, k), ref[f"cls_scores_l{k}"]),
                rel_to_one_plus_max(at(b, k), ref[f"bbox_preds_l{k}"]),
            )
            for k, (c, b) in enumerate(zip(cls, box, strict=True))
        ),
        "preprocessing_mean_abs": float(diff.mean()),
        "preprocessing_max_abs": float(diff.max()),
        "detections": detection_match(det.predict(images), ref),
    }


def train_mode(name: str, ckpt: pathlib.Path, ref: dict, meta: dict) -> dict:
    """float64 and float32 losses and gradients against the references."""
    gap = meta["torch_float32_vs_float64"]
    report: dict = {}
    for precision in ("fp64", "fp32"):
        losses, grads = train_pass(name, ckpt, ref, meta, precision)
        suffix = "_f64" if precision == "fp64" else ""
        entry: dict = {"avg_factor": losses["avg_factor"].tolist()}
        for k in ("loss_cls", "loss_bbox"):
            theirs = ref[f"{k}_per_image{suffix}"]
            entry[f"{k}_rel"] = np.abs(losses[k] / theirs - 1).tolist()
            if precision == "fp32":
                entry[f"{k}_rel_to_f64"] = np.abs(
                    losses[k] / ref[f"{k}_per_image_f64"] - 1
                ).tolist()
                entry[f"{k}_torch_f32_vs_f64"] = gap[f"{k}_rel"]
        total = losses["loss_cls"].sum() + losses["loss_bbox"].sum()
        entry["loss_total_rel"] = float(abs(total / ref[f"loss_total{suffix}"] - 1))
        prefix = "grad64" if precision == "fp64" else "grad"
        entry["grad_rel_to_max"] = {
            k: rel_to_max(g, ref[f"{prefix}/{k}"]) for k, g in grads.items()
        }
        if precision == "fp32":
            entry["grad_rel_to_max_vs_f64"] = {
                k: rel_to_max(g, ref[f"grad64/{k}"]) for k, g in grads.items()
            }
            entry["grad_cosine_vs_f64"] = {
                k: cosine(g, ref[f"grad64/{k}"]) for k, g in grads.items()
            }
            entry["grad_torch_f32_vs_f64"] = gap["grad_rel_to_max"]
        report[precision] = entry
    return report


def exported(det, ref: dict, workdir: pathlib.Path) -> dict:
    """Raw outputs and detections of the exported files in each runtime."""
    from ssd_jax.export import export
    from ssd_jax.export import runtime as rt

    x = nhwc(ref["inputs_nchw"]) * np.asarray(det.config.model.std, np.float32)
    uint8 = np.round(x + np.asarray(det.config.model.mean, np.float32)).astype(np.uint8)
    num_classes = len(det.class_names)
    report = {}
    for runtime, fmt, suffix in (
        ("onnxruntime", "onnx", ".onnx"),
        ("openvino", "onnx", ".onnx"),
        ("jax", "jax", ".jaxexport"),
    ):
        raw_path = workdir / f"raw{suffix}"
        det_path = workdir / f"detect{suffix}"
        if not raw_path.exists():
            export(det, raw_path, fmt, raw=True)
            export(det, det_path, fmt, raw=False)
        out = rt.load(raw_path, runtime)(images=uint8)
        errors, start = [], 0
        for k in range(len(det.anchors())):
            c_ref, b_ref = nhwc(ref[f"cls_scores_l{k}"]), nhwc(ref[f"bbox_preds_l{k}"])
            count = int(np.prod(c_ref.shape[1:])) // (num_classes + 1)
            errors.append(
                rel_to_one_plus_max(
                    out["cls_logits"][:, start : start + count].reshape(c_ref.shape), c_ref
                )
            )
            errors.append(
                rel_to_one_plus_max(
                    out["bbox_deltas"][:, start : start + count].reshape(b_ref.shape), b_ref
                )
            )
            start += count
        results = rt.predict(rt.load(det_path, runtime), [ref["image_0"], ref["image_1"]])
        report[runtime] = {"raw_outputs": max(errors), "detections": detection_match(results, ref)}
    return report


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return {"cpu": model, "python": platform.python_version()}


def versions() -> dict:
    from importlib import metadata

    out = {}
    for package in ("jax", "jaxlib", "flax", "numpy", "onnxruntime", "openvino", "jax2onnx"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default=str(REPO.parent / "shared" / "fixtures"))
    parser.add_argument("--out", default="")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--only-ssd512", action="store_true", help="SSD512 alone")
    args = parser.parse_args(argv)

    from ssd_jax import Detector

    report: dict = {
        "script": "scripts/parity_report.py",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "fixtures": {},
    }
    for name, config in {} if args.only_ssd512 else CONFIGS.items():
        folder = pathlib.Path(args.fixtures) / name
        ref = dict(np.load(folder / "reference.npz"))
        meta = json.loads((folder / "meta.json").read_text())
        ckpt = folder / "checkpoint.pth.xz"
        print(f"{name}: eval mode", file=sys.stderr)
        det = Detector.from_checkpoint(config, ckpt)
        entry = eval_mode(det, ref)
        print(f"{name}: train mode (float64, float32)", file=sys.stderr)
        entry["train"] = train_mode(name, ckpt, ref, meta)
        if not args.skip_export:
            print(f"{name}: exported models", file=sys.stderr)
            with tempfile.TemporaryDirectory() as tmp:
                entry["exported"] = exported(det, ref, pathlib.Path(tmp))
        report["fixtures"][name] = entry
    print("ssd512_coco: eval mode", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        report["fixtures"]["ssd512_coco"] = ssd512(pathlib.Path(tmp))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
