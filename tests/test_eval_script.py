"""``ssd-jax-eval`` (eval.py) and ``ssd_jax.evaluation``: the evaluation path against
mmdetection's detections, end to end on small data sets (COCO format, mmdetection .pth, VOC)."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from conftest import REPO, checkpoint_file, load_reference
from ssd_jax.cli.evaluate import evaluate
from ssd_jax.coco_classes import COCO_CATEGORY_IDS as COCO_CAT_IDS
from ssd_jax.coco_classes import COCO_CLASSES
from ssd_jax.evaluation.coco import coco_evaluate, detections_to_coco_results, metric_names
from ssd_jax.porting import CheckpointMismatchError

MMDET_MAX_DETS = (100, 300, 1000)
METRIC_NAMES = metric_names(MMDET_MAX_DETS)


def read_outputs(out: pathlib.Path) -> tuple[dict, list[dict]]:
    return (
        json.loads((out / "metrics.json").read_text()),
        json.loads((out / "results.bbox.json").read_text()),
    )


# ---------------------------------------------------------------------------------------------
# Against mmdetection: the fixture's two images, a ground truth made around its detections.

# (image, index of a reference detection (-1: none), xyxy offset in px, label): ground truth
# boxes shifted off mmdetection's detections by a few pixels (IoU between 0.5 and 0.95, so
# AP depends on the IoU threshold), plus objects nothing was detected on. The same plan as
# scripts/make_coco_metric_reference.py's (the SSD300 test checks the files are equal).
GT_PLAN = [
    (0, 0, (8, -6, 5, 10), None),
    (0, 2, (-3, 4, -12, 2), None),
    (0, 6, (20, 15, -10, -25), None),
    (0, 8, (1, 1, -1, -1), None),
    (0, -1, (30, 40, 90, 110), 66),
    (0, -1, (300, 20, 330, 52), 0),
    (1, 0, (-5, 3, 6, -4), None),
    (1, 1, (15, -10, 5, 20), None),
    (1, 7, (2, 2, -2, -2), None),
    (1, -1, (10, 300, 70, 355), 44),
]


def write_reference_dataset(root: pathlib.Path, ref: dict[str, np.ndarray]) -> tuple[str, str]:
    """The fixture images as PNG and a COCO ground truth with the 80 classes (real ids)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    images = []
    for i in (0, 1):
        image = ref[f"image_{i}"]
        Image.fromarray(image).save(img_dir / f"{i}.png")
        images.append(
            {
                "id": i + 1,
                "file_name": f"{i}.png",
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
            }
        )
    annotations = []
    for image, det_index, offset, label in GT_PLAN:
        if det_index >= 0:
            box = ref[f"det_bboxes_{image}"][det_index] + np.array(offset, np.float32)
            label = int(ref[f"det_labels_{image}"][det_index])
        else:
            box = np.array(offset, np.float32)
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image + 1,
                "category_id": COCO_CAT_IDS[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
        )
    categories = [{"id": c, "name": n} for c, n in zip(COCO_CAT_IDS, COCO_CLASSES)]
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return str(ann_file), str(img_dir)


def mmdet_metrics(ref: dict[str, np.ndarray], ann_file: str) -> dict:
    """mmdetection's detections through our results path (CocoMetric's max_dets)."""
    dets = [
        {
            "boxes": ref[f"det_bboxes_{i}"],
            "scores": ref[f"det_scores_{i}"],
            "labels": ref[f"det_labels_{i}"],
        }
        for i in (0, 1)
    ]
    results = detections_to_coco_results([1, 2], dets, COCO_CAT_IDS)
    return coco_evaluate(ann_file, results, class_names=COCO_CLASSES, max_dets=MMDET_MAX_DETS)


def assert_same_metrics(ours: dict, theirs: dict, tol: float = 1e-6) -> None:
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=tol), name
    for name, ap in theirs["per_class_AP"].items():
        got = ours["per_class_AP"][name]
        assert (math.isnan(ap) and (got is None or math.isnan(got))) or got == pytest.approx(
            ap, abs=tol
        ), name


MMDET_COCO_METRIC = REPO / "tests" / "data" / "coco_metric"


def test_eval_script_matches_mmdetection_on_fixture(tmp_path):
    """eval.py (the .pth imported on the fly) gives the 12 COCO numbers and per-class AP that
    mmdetection 3.3.0's own CocoMetric gives for its detections (tests/data/coco_metric, made by
    scripts/make_coco_metric_reference.py in mmdetection's environment): equal to its unrounded
    numbers within 1e-6, and to what it reports (3 decimals) after the same rounding."""
    ref = load_reference("ssd300_coco")
    ann_file, img_dir = write_reference_dataset(tmp_path / "data", ref)
    stored = json.loads((MMDET_COCO_METRIC / "instances.json").read_text())
    assert json.loads(pathlib.Path(ann_file).read_text()) == stored  # the same ground truth
    mmdet = json.loads((MMDET_COCO_METRIC / "reference.json").read_text())
    expected = mmdet["unrounded"]
    assert 0.05 < expected["bbox_mAP"] < 0.95  # a ground truth that discriminates
    assert 0 < expected["bbox_mAP_75"] < expected["bbox_mAP_50"] < 1

    out = tmp_path / "out"
    metrics = evaluate(
        [
            f"--config={REPO / 'configs' / 'ssd300_coco.py'}",
            f"--checkpoint={checkpoint_file('ssd300_coco')}",
            f"--ann-file={ann_file}",
            f"--img-dir={img_dir}",
            f"--out={out}",
            "--batch-size=2",
            "--num-workers=0",
            "--no-progress",
        ]
    )
    written, results = read_outputs(out)
    assert list(written)[:12] == list(METRIC_NAMES)
    for ours in (metrics, written):
        for name in METRIC_NAMES:
            assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
            assert round(ours[name], 3) == mmdet["reported"][name], name
        per_class = ours["per_class_AP"]
        for name, ap in mmdet["per_class_ap_reported"].items():
            got = per_class[name]
            if math.isnan(ap):
                assert got is None or math.isnan(got), name
            else:
                assert round(got, 3) == pytest.approx(ap, abs=1e-9), name
    counts = [sum(r["image_id"] == i for r in results) for i in (1, 2)]
    assert counts == [len(ref["det_scores_0"]), len(ref["det_scores_1"])]
    assert {r["category_id"] for r in results} <= set(COCO_CAT_IDS)


# ---------------------------------------------------------------------------------------------
# End to end on the synthetic shapes data with a random-init orbax checkpoint.


def random_variables(config, seed: int = 0) -> dict:
    """Random variables of the config's model (normal weights, unit BN variances), without
    compiling its initialisers (slow on CPU)."""
    from ssd_jax.models.assembly import zero_variables

    rng = np.random.default_rng(seed)
    zeros = zero_variables(config)
    params = jax.tree.map(lambda z: rng.normal(0, 0.05, z.shape).astype(z.dtype), zeros["params"])
    stats = {
        path: (np.ones_like(z) if path[-1] == "var" else z)
        for path, z in traverse_util.flatten_dict(zeros["batch_stats"]).items()
    }
    return {"params": params, "batch_stats": traverse_util.unflatten_dict(stats)}


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A 4 + 4 image shapes data set and a random SSDLite checkpoint of ssdlite_shapes."""
    from ssd_jax.checkpoints import save_variables
    from ssd_jax.config import load_config
    from ssd_jax.data import synthetic

    root = tmp_path_factory.mktemp("shapes")
    paths = synthetic.write_shapes_dataset(root / "data", num_train=4, num_val=4, image_size=96)
    config = load_config(REPO / "configs" / "ssdlite_shapes.py")
    ckpt = save_variables(
        root / "ckpt",
        random_variables(config),
        {"config": config.name, "class_names": list(config.class_names)},
    )
    return {**paths, "dir": root, "ckpt": ckpt}


def shapes_argv(run: dict, *extra: str) -> list[str]:
    return [
        f"--config={REPO / 'configs' / 'ssdlite_shapes.py'}",
        f"--checkpoint={run['ckpt']}",
        "--num-workers=0",
        "--no-progress",
        "--config.test.batch_size=4",
        *extra,
    ]


def test_eval_script_end_to_end_orbax(shapes_run, capsys):
    out = shapes_run["dir"] / "out"
    metrics = evaluate(
        shapes_argv(
            shapes_run,
            f"--ann-file={shapes_run['val_annotations']}",
            f"--img-dir={shapes_run['val_images']}",
            f"--out={out}",
        )
    )
    written, results = read_outputs(out)
    assert list(written)[:12] == list(METRIC_NAMES) and len(written) == 13
    assert set(written["per_class_AP"]) == {"ellipse", "rectangle", "triangle", "star"}
    assert all(-1 <= written[k] <= 1 for k in METRIC_NAMES)
    assert written["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"])
    assert results and {r["image_id"] for r in results} <= {1, 2, 3, 4}
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}
    assert all(len(r["bbox"]) == 4 and 0 < r["score"] <= 1 for r in results)
    printed = capsys.readouterr().out
    assert "bbox_mAP_50" in printed and "rectangle" in printed


def test_eval_refuses_to_replace_earlier_outputs(shapes_run, tmp_path):
    """An --out that already holds metrics.json / results.bbox.json is refused before anything
    runs, unless --overwrite."""
    from ssd_jax.errors import OutputExistsError

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{} ")
    argv = shapes_argv(
        shapes_run,
        f"--ann-file={shapes_run['val_annotations']}",
        f"--img-dir={shapes_run['val_images']}",
        f"--out={out}",
    )
    with pytest.raises(OutputExistsError, match="metrics.json exists"):
        evaluate(argv)
    assert (out / "metrics.json").read_text() == "{} "
    evaluate(argv + ["--overwrite"])
    assert "bbox_mAP" in json.loads((out / "metrics.json").read_text())


def test_eval_script_refuses_other_class_count(shapes_run, tmp_path):
    coco = json.loads(pathlib.Path(shapes_run["val_annotations"]).read_text())
    coco["categories"] = coco["categories"][:3]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] <= 3]
    ann_file = tmp_path / "three_classes.json"
    ann_file.write_text(json.dumps(coco))
    with pytest.raises(
        CheckpointMismatchError,
        match="it is a ssdlite_shapes trained for 4 classes, the config .* has 3",
    ):
        evaluate(
            shapes_argv(
                shapes_run,
                f"--ann-file={ann_file}",
                f"--img-dir={shapes_run['val_images']}",
                f"--out={tmp_path / 'out'}",
            )
        )


def test_eval_script_refuses_pth_of_other_classes(shapes_run, tmp_path):
    # The 80-class mmdetection checkpoint on the 4-class shapes data.
    with pytest.raises(
        CheckpointMismatchError,
        match="it is a ssd300_coco trained for 80 classes, the config .* has 4",
    ):
        evaluate(
            [
                f"--config={REPO / 'configs' / 'ssd300_coco.py'}",
                f"--checkpoint={checkpoint_file('ssd300_coco')}",
                f"--ann-file={shapes_run['val_annotations']}",
                f"--img-dir={shapes_run['val_images']}",
                f"--out={tmp_path / 'out'}",
            ]
        )


# ---------------------------------------------------------------------------------------------
# VOC

# name → (width, height, grey level, [(class, xmin, ymin, xmax, ymax 1-based), difficult])
VOC_IMAGES = {
    "000001": (64, 48, 40, [("dog", 11, 11, 41, 31, 0), ("person", 6, 6, 21, 21, 1)]),
    "2008_000002": (80, 60, 80, [("cat", 21, 16, 71, 56, 0), ("dog", 2, 2, 31, 31, 0)]),
}


def write_voc_tree(root: pathlib.Path) -> pathlib.Path:
    """A two-image VOC2007 ``test`` split of uniform grey images (grey level = identity)."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for name, (w, h, grey, objects) in VOC_IMAGES.items():
        Image.new("RGB", (w, h), (grey,) * 3).save(year / "JPEGImages" / f"{name}.jpg", quality=100)
        xml = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2, d in objects
        )
        (year / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"{xml}</annotation>"
        )
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(VOC_IMAGES) + "\n")
    return root


DUMMY_VARIABLES = {"params": np.zeros(1, np.float32)}  # replicated, unused by the oracle


def oracle_p_detect(voc_root: pathlib.Path, max_dets: int = 4):
    """A stand-in for ``make_p_detect``: recognises each image by its grey level and returns
    its non-difficult ground truth (0-based, original pixels), plus a false "cat" at score 0.95
    on the first image. Padding images (black) get no detections."""
    from ssd_jax.data.voc import VOC_CLASSES, VocSource
    from ssd_jax.postprocess import Detections

    source = VocSource(voc_root, "test")
    table = {}
    for record, (_, _, grey, _) in zip(source.records, VOC_IMAGES.values()):
        keep = ~record["difficult"]
        boxes, labels = record["boxes"][keep], record["labels"][keep]
        scores = np.linspace(0.8, 0.6, len(labels))
        if grey == 40:
            boxes = np.concatenate([[[30, 0, 60, 20]], boxes])
            labels = np.concatenate([[VOC_CLASSES.index("cat")], labels])
            scores = np.concatenate([[0.95], scores])
        table[grey] = (boxes, scores, labels)

    def p_detect(variables, images, scale_factors):
        d, b = images.shape[:2]
        out = Detections(
            np.zeros((d, b, max_dets, 4), np.float32),
            np.zeros((d, b, max_dets), np.float32),
            np.full((d, b, max_dets), -1, np.int32),
            np.zeros((d, b), np.int32),
        )
        for i in range(d):
            for j in range(b):
                grey = int(round(float(np.mean(images[i, j])) / 40)) * 40
                if grey in table:
                    boxes, scores, labels = table[grey]
                    k = len(labels)
                    out.boxes[i, j, :k], out.scores[i, j, :k] = boxes, scores
                    out.labels[i, j, :k], out.num_valid[i, j] = labels, k
        return out

    return p_detect


@pytest.mark.parametrize("mode", ["area", "11points"])
def test_evaluate_voc_maps_string_ids_and_difficult(tmp_path, mode):
    # dog: 2 gts, 2 TPs → AP 1. cat: a FP (0.95) above its TP (0.8) → curve (0, 0), (1, 0.5) →
    # AP 0.5 in both modes. person: only a difficult gt → not counted (nan). mAP = 0.75.
    from ssd_jax.config import load_config
    from ssd_jax.data.voc import VocSource
    from ssd_jax.evaluation.evaluate import evaluate_voc

    root = write_voc_tree(tmp_path)
    config = load_config(REPO / "configs" / "ssdlite_shapes.py")
    metrics, dets = evaluate_voc(
        oracle_p_detect(root),
        DUMMY_VARIABLES,
        VocSource(root, "test"),
        config,
        batch_size=3,
        progress=False,
        mode=mode,
    )
    assert metrics["mAP"] == pytest.approx(0.75)
    assert metrics["per_class_AP"]["dog"] == pytest.approx(1.0)
    assert metrics["per_class_AP"]["cat"] == pytest.approx(0.5)
    assert math.isnan(metrics["per_class_AP"]["person"]) and metrics["num_gts"]["person"] == 0
    assert metrics["mode"] == mode and len(metrics["per_class_AP"]) == 20
    assert [d["image_id"] for d in dets] == list(VOC_IMAGES)
    assert [len(d["labels"]) for d in dets] == [2, 2]


def test_evaluate_coco_on_voc_records(tmp_path):
    # The same detections scored by COCOeval against a ground truth built from the records:
    # exact boxes, so every IoU threshold agrees; the difficult person is ignored (crowd).
    from ssd_jax.config import load_config
    from ssd_jax.data.voc import VocSource
    from ssd_jax.evaluation.evaluate import evaluate_coco

    root = write_voc_tree(tmp_path)
    config = load_config(REPO / "configs" / "ssdlite_shapes.py")
    metrics, results = evaluate_coco(
        oracle_p_detect(root),
        DUMMY_VARIABLES,
        VocSource(root, "test"),
        config,
        batch_size=2,
        progress=False,
    )
    assert metrics["per_class_AP"]["dog"] == pytest.approx(1.0)
    assert metrics["per_class_AP"]["cat"] == pytest.approx(0.5)
    assert math.isnan(metrics["per_class_AP"]["person"])
    assert metrics["bbox_mAP"] == pytest.approx(0.75)
    assert {r["image_id"] for r in results} == {0, 1}  # record indices for string VOC ids


def test_eval_script_voc_end_to_end(tmp_path):
    """eval.py --data voc with a random 20-class checkpoint: VOC metrics and results files."""
    from ssd_jax.checkpoints import save_variables
    from ssd_jax.config import load_config
    from ssd_jax.data.voc import VOC_CLASSES

    root = write_voc_tree(tmp_path / "voc")
    config = load_config(REPO / "configs" / "ssdlite_shapes.py")
    config.class_names, config.model.num_classes = VOC_CLASSES, len(VOC_CLASSES)
    ckpt = save_variables(tmp_path / "ckpt", random_variables(config), {"config": "voc20"})
    out = tmp_path / "out"
    metrics = evaluate(
        [
            f"--config={REPO / 'configs' / 'ssdlite_shapes.py'}",
            f"--checkpoint={ckpt}",
            "--data=voc",
            f"--voc-root={root}",
            "--voc-mode=11points",
            f"--out={out}",
            "--batch-size=2",
            "--num-workers=0",
            "--no-progress",
        ]
    )
    written, results = read_outputs(out)
    assert written["mode"] == "11points" and 0 <= written["mAP"] <= 1
    assert written["mAP"] == pytest.approx(metrics["mAP"])
    assert set(written["per_class_AP"]) == set(VOC_CLASSES)
    assert written["per_class_AP"]["person"] is None  # nan → null: only a difficult gt
    assert {r["image_id"] for r in results} <= set(VOC_IMAGES)
    assert {r["category_id"] for r in results} <= set(range(1, 21))


# ---------------------------------------------------------------------------------------------
# The deployed file: ssd-jax-eval --backend onnxruntime|openvino on an ssd-jax-export .onnx,
# --backend litert on a .tflite.


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_eval_of_the_exported_file_gives_mmdetections_numbers(tmp_path, backend):
    """The exported SSDLite fixture (detections inside the ONNX / TFLite file) evaluated as
    deployed gives the same 12 COCO numbers as mmdetection's detections and as the JAX backend
    (an exported model has no variables: evaluation once crashed replicating them)."""
    from conftest import load_detector, require

    fmt = "tflite" if backend == "litert" else "onnx"
    require("onnx" if fmt == "onnx" else "tensorflow")
    require(
        {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}[backend]
    )
    from ssd_jax.export import export

    ref = load_reference("ssdlite_mobilenetv2_320_coco")
    ann_file, img_dir = write_reference_dataset(tmp_path / "data", ref)
    expected = mmdet_metrics(ref, ann_file)
    assert 0.05 < expected["bbox_mAP"] < 0.95
    onnx_file = tmp_path / f"ssdlite.{fmt}"
    export(load_detector("ssdlite_mobilenetv2_320_coco"), onnx_file, fmt)
    config = REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py"
    common = [f"--config={config}", f"--ann-file={ann_file}", f"--img-dir={img_dir}"]
    common += ["--batch-size=2", "--num-workers=0", "--no-progress"]
    deployed = evaluate(
        common + [f"--checkpoint={onnx_file}", f"--backend={backend}", f"--out={tmp_path / 'o'}"]
    )
    assert_same_metrics(deployed, expected)
    written, results = read_outputs(tmp_path / "o")
    assert_same_metrics(written, expected)
    counts = [sum(r["image_id"] == i for r in results) for i in (1, 2)]
    assert counts == [len(ref["det_scores_0"]), len(ref["det_scores_1"])]
