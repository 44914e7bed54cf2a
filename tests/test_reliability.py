"""Reliability: bad input, faults and long runs, each fed through the real loaders and savers.

docs/RELIABILITY.md lists every case with what the program does and the test behind it; cases
already covered elsewhere (tests/test_data_pipeline.py, tests/test_predict.py,
tests/test_pth_reader.py, tests/test_porting.py, tests/test_training.py) are only referenced
there.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import REQUIRE_FIXTURES
from ssd_jax.assigner import max_iou_assign
from ssd_jax.box_ops import pairwise_iou
from ssd_jax.config import check_batch_divisible, load_config, validate_config
from ssd_jax.data import transforms as T
from ssd_jax.data.coco import CocoSource
from ssd_jax.data.pipeline import make_eval_loader, make_train_loader
from ssd_jax.training.checkpointing import CheckpointRestoreError, TrainCheckpointer
from ssd_jax.training.state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssd300_coco.py"
INPUT_SIZE = 64


def coco_json(path: pathlib.Path, images, annotations, categories=({"id": 1, "name": "thing"},)
              ) -> pathlib.Path:
    """Write a COCO annotation file; ``images`` are (id, file_name, height, width)."""
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "height": h, "width": w} for i, n, h, w in images],
        "annotations": list(annotations), "categories": list(categories)}))
    return path


def ann(ann_id: int, image_id: int, bbox, category_id: int = 1, area=None) -> dict:
    area = bbox[2] * bbox[3] if area is None else area
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": area, "iscrowd": 0}


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, [f"input_size={INPUT_SIZE}", "train.max_boxes=4"])


# ---- 1. Bad images in a COCO data set, through the real loaders ----

STORED_HW = (48, 64)  # every image file is stored 48 × 64; the EXIF one displays as 64 × 48


def _rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*STORED_HW, 3), dtype=np.uint8)


def _exif_rotated(path: pathlib.Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(_rgb()).save(path, exif=exif)


def _truncated(path: pathlib.Path) -> None:
    Image.fromarray(_rgb()).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# name → writer; "missing.jpg" is listed in the JSON but never written.
IMAGE_FILES = {
    "plain.jpg": lambda p: Image.fromarray(_rgb()).save(p),
    "alpha.png": lambda p: Image.fromarray(
        np.dstack([_rgb(), np.full(STORED_HW, 9, np.uint8)]), "RGBA").save(p),
    "gray.png": lambda p: Image.fromarray(_rgb()[..., 0], "L").save(p),
    "gray16.png": lambda p: Image.fromarray(_rgb()[..., 0].astype(np.uint16) * 257).save(p),
    "cmyk.jpg": lambda p: Image.fromarray(_rgb()).convert("CMYK").save(p),
    "exif.jpg": _exif_rotated,
    "truncated.jpg": _truncated,
    "empty.png": lambda p: p.write_bytes(b""),
    "missing.jpg": None,
}
UNREADABLE = ("truncated.jpg", "empty.png", "missing.jpg")
IMAGE_IDS = {name: i + 1 for i, name in enumerate(IMAGE_FILES)}


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("odd_images")
    images = []
    for name, write in IMAGE_FILES.items():
        if write is not None:
            write(root / name)
        h, w = STORED_HW[::-1] if name == "exif.jpg" else STORED_HW  # as displayed
        images.append((IMAGE_IDS[name], name, h, w))
    annotations = [ann(i, i, [4, 4, 30, 30]) for i in IMAGE_IDS.values()]
    coco_json(root / "ann.json", images, annotations)
    return root


def test_odd_images_train_and_unreadable_ones_are_skipped_naming_the_file(odd_images, cfg,
                                                                          caplog):
    source = CocoSource(odd_images / "ann.json", odd_images, filter_train=True)
    assert len(source) == len(IMAGE_FILES)
    with caplog.at_level(logging.WARNING, logger="ssd_jax.data.pipeline"):
        loader = make_train_loader(source, cfg, global_batch_size=4, seed=0, num_workers=0)
        batches = [next(loader) for _ in range(3)]  # 12 readable examples: > one epoch of 6
    readable = {IMAGE_IDS[n] for n in IMAGE_FILES if n not in UNREADABLE}
    seen = {int(i) for b in batches for i in b["image_id"]}
    assert seen == readable
    for b in batches:
        assert b["image"].shape == (4, INPUT_SIZE, INPUT_SIZE, 3) and b["image"].dtype == np.uint8
    assert loader.skipped_images >= len(UNREADABLE)
    messages = [r.getMessage() for r in caplog.records]
    for name in UNREADABLE:
        assert any(str(odd_images / name) in m and "skipped image" in m for m in messages), name


def test_eval_loader_applies_exif_and_pads_unreadable_images(odd_images, cfg):
    source = CocoSource(odd_images / "ann.json", odd_images)
    loader = make_eval_loader(source, cfg, batch_size=len(IMAGE_FILES))
    (batch,) = list(loader)
    by_id = {int(i): k for k, i in enumerate(batch["image_id"]) if i >= 0}
    assert set(by_id) == {IMAGE_IDS[n] for n in IMAGE_FILES if n not in UNREADABLE}
    assert loader.skipped_images == len(UNREADABLE)
    assert int(batch["valid_image"].sum()) == len(IMAGE_FILES) - len(UNREADABLE)
    for name in IMAGE_FILES:
        if name not in UNREADABLE:
            expected = STORED_HW[::-1] if name == "exif.jpg" else STORED_HW
            assert tuple(batch["ori_shape"][by_id[IMAGE_IDS[name]]]) == expected, name
    gray = batch["image"][by_id[IMAGE_IDS["gray16.png"]]]
    assert gray.max() > 200  # 16-bit scaled to 8 bits, not clipped to 255 nor shifted to ~0
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


def test_a_data_set_without_any_readable_image_raises_instead_of_spinning(tmp_path, cfg):
    coco_json(tmp_path / "ann.json", [(1, "gone1.jpg", 40, 40), (2, "gone2.jpg", 40, 40)],
              [ann(1, 1, [2, 2, 20, 20]), ann(2, 2, [2, 2, 20, 20])])
    loader = make_train_loader(CocoSource(tmp_path / "ann.json", tmp_path, filter_train=True),
                               cfg, global_batch_size=2, seed=0, num_workers=0)
    with pytest.raises(RuntimeError, match="no readable image in a whole epoch"):
        next(loader)


# ---- 1. Bad annotations ----

def test_negative_width_or_height_is_dropped_counted_and_named(tmp_path, caplog):
    ann_file = coco_json(tmp_path / "ann.json", [(1, "a.jpg", 64, 64)], [
        ann(1, 1, [10, 10, 20, 20]), ann(2, 1, [30, 10, -8, 20]), ann(3, 1, [10, 30, 20, -8]),
        ann(4, 1, [10, 10, 0, 20])])
    with caplog.at_level(logging.WARNING, logger="ssd_jax.data.coco"):
        source = CocoSource(ann_file, tmp_path)
    assert sum(source.dropped.values()) == 3
    np.testing.assert_array_equal(source[0]["boxes"], [[10, 10, 30, 30]])
    for ann_id in (2, 3, 4):
        assert any("ann.json" in r.getMessage() and f"annotation id {ann_id} " in r.getMessage()
                   for r in caplog.records), ann_id


def _refused_or_dropped(ann_file: pathlib.Path, img_dir: pathlib.Path, bad_ids, caplog) -> None:
    """The annotations ``bad_ids`` are either refused (ValueError naming the file and one of
    them) or dropped, counted and logged by id; training never sees them."""
    try:
        with caplog.at_level(logging.WARNING, logger="ssd_jax.data.coco"):
            source = CocoSource(ann_file, img_dir)
    except ValueError as e:
        assert ann_file.name in str(e)
        assert any(f"annotations[{i - 1}]" in str(e) or f"id {i}" in str(e) for i in bad_ids)
        return
    assert sum(source.dropped.values()) == len(bad_ids)
    boxes = source[0]["boxes"]
    assert np.isfinite(boxes).all() and len(boxes) == 1
    for i in bad_ids:
        assert any(ann_file.name in r.getMessage() and f"annotation id {i} " in r.getMessage()
                   for r in caplog.records), i


def test_nan_coordinates_never_reach_training(tmp_path, caplog):
    nan = float("nan")
    bad = [[nan, 4, 10, 10], [4, nan, 10, 10], [4, 4, nan, 10], [4, 4, 10, nan]]
    ann_file = coco_json(tmp_path / "ann.json", [(1, "a.jpg", 64, 64)],
                         [ann(1, 1, [10, 10, 20, 20], area=nan)]  # NaN area alone is harmless
                         + [ann(i + 2, 1, b) for i, b in enumerate(bad)])
    assert "NaN" in ann_file.read_text()  # what json.dump writes, and json.load reads back
    _refused_or_dropped(ann_file, tmp_path, [2, 3, 4, 5], caplog)


@pytest.mark.parametrize("value", [float("inf"), None], ids=["Infinity", "null"])
def test_infinite_or_null_coordinates_never_reach_training(tmp_path, caplog, value):
    ann_file = coco_json(tmp_path / "ann.json", [(1, "a.jpg", 64, 64)],
                         [ann(1, 1, [10, 10, 20, 20]), ann(2, 1, [0, 0, value, 10], area=100)])
    _refused_or_dropped(ann_file, tmp_path, [2], caplog)


@pytest.mark.parametrize("section", ["annotations", "categories"])
def test_duplicate_annotation_or_category_ids_are_refused_naming_the_entry(tmp_path, section):
    annotations = [ann(1, 1, [1, 1, 9, 9]), ann(2 if section == "categories" else 1, 1,
                                                [2, 2, 9, 9])]
    categories = [{"id": 1, "name": "a"}, {"id": 1 if section == "categories" else 2,
                                           "name": "b"}]
    ann_file = coco_json(tmp_path / "ann.json", [(1, "a.jpg", 40, 40)], annotations, categories)
    with pytest.raises(ValueError, match=rf"ann\.json: {section}\[1\] repeats id 1 of "
                                         rf"{section}\[0\]"):
        CocoSource(ann_file, tmp_path)


def test_thousands_of_boxes_keep_the_largest_max_boxes_and_warn_once(tmp_path, caplog):
    rng = np.random.default_rng(0)
    n, size = 3000, 64
    sides = 1.0 + 40.0 * rng.permutation(n) / n  # distinct areas
    xy = rng.uniform(0, size - sides[:, None], (n, 2))
    coco_json(tmp_path / "ann.json", [(7, "many.png", size, size)],
              [ann(k + 1, 7, [*map(float, xy[k]), float(sides[k]), float(sides[k])])
               for k in range(n)])
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(tmp_path / "many.png")
    # Geometry kept as it is (no expand, full-image crop, no flip) so that the kept boxes can be
    # named; S = the image size, so resizing does not move them either.
    cfg = load_config(CONFIG, [f"input_size={size}", "train.max_boxes=100",
                               "augment.expand_ratio=(1.0, 1.0)", "augment.min_crop_size=1.0",
                               "augment.flip_prob=0.0"])
    source = CocoSource(tmp_path / "ann.json", tmp_path, filter_train=True)
    assert len(source[0]["labels"]) == n
    with caplog.at_level(logging.WARNING, logger="ssd_jax.data.pipeline"):
        loader = make_train_loader(source, cfg, global_batch_size=2, seed=0, num_workers=0)
        batches = [next(loader) for _ in range(2)]
    boxes = np.concatenate([xy, xy + sides[:, None]], axis=1).astype(np.float32)
    largest = np.sort(np.argsort(-sides, kind="stable")[:100])
    for b in batches:
        assert b["valid"].shape == (2, 100) and b["valid"].all()
        for k in range(2):
            np.testing.assert_allclose(b["boxes"][k], boxes[largest], atol=1e-3)
    warnings = [r.getMessage() for r in caplog.records if "kept the 100 largest" in r.getMessage()]
    assert warnings == [f"image 7 has {n} boxes after augmentation; kept the 100 largest "
                        "(cfg.train.max_boxes)"]


def test_boxes_cut_to_nothing_by_the_border_are_not_trained_on(tmp_path):
    # Intersection with the image 1e-6 px wide: kept by CocoSource (> 0 in float64), but
    # float32(63.999999) == 64.0, so the box lies on the border.
    coco_json(tmp_path / "ann.json", [(1, "edge.png", 64, 64)],
              [ann(1, 1, [20, 20, 20, 20]), ann(2, 1, [63.999999, 10, 30, 30])])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "edge.png")
    cfg = load_config(CONFIG, ["input_size=300", "train.max_boxes=4"])
    loader = make_train_loader(CocoSource(tmp_path / "ann.json", tmp_path, filter_train=True),
                               cfg, global_batch_size=8, seed=0, num_workers=0)
    batch = next(loader)
    boxes = batch["boxes"][batch["valid"]]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# ---- 2. Bad checkpoints ----

@pytest.mark.parametrize("option", ["load_from", "pretrained_backbone"])
def test_truncated_pth_as_starting_weights_is_refused_naming_the_file(tmp_path, option):
    if REQUIRE_FIXTURES:  # the CI run fails without torch, never skips
        import torch
    else:
        torch = pytest.importorskip("torch")
    from ssd_jax.porting import CheckpointFormatError
    from ssd_jax.training.init import initial_variables
    path = tmp_path / "start.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(8, 3, 3, 3)}}, path)
    path.write_bytes(path.read_bytes()[:-200])
    config = load_config(CONFIG, [f"train.{option}={str(path)!r}"])
    with pytest.raises(CheckpointFormatError, match="start.pth"):
        initial_variables(config, {"params": {"x": np.zeros(1, np.float32)}, "batch_stats": {}})


def tiny_state(step: int):
    """A TrainState of two small arrays (no model to compile) whose values encode ``step``."""
    params = {"w": np.full((2, 3), step, np.float32), "b": np.full(3, step, np.float32)}
    state = create_train_state({"params": params, "batch_stats": {}},
                               optax.sgd(0.1, momentum=0.9), 0)
    return state.replace(step=jnp.int32(step))


def save_steps(workdir: pathlib.Path, steps) -> TrainCheckpointer:
    ckpt = TrainCheckpointer(str(workdir), keep=5)
    for s in steps:
        ckpt.save(s, tiny_state(s), {"data_state": {"position": s}})
    return ckpt


# Files whose damage orbax notices (cutting the per-process ocdbt.process_0/ copies is not
# noticed: the merged files at the item root are what is read).
CUT_FILES = ["variables/d/*", "variables/_METADATA", "train_state/manifest.ocdbt",
             "meta/metadata"]


def cut(step_dir: pathlib.Path, pattern: str) -> pathlib.Path:
    (path,) = [p for p in step_dir.glob(pattern) if p.is_file()][:1]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


# A restore that fails inside orbax can leave a callback for its closed asyncio loop behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("pattern", CUT_FILES)
def test_restore_falls_back_from_a_cut_step_and_the_next_save_replaces_it(tmp_path, pattern,
                                                                          caplog):
    save_steps(tmp_path, [1, 2]).close()
    cut(tmp_path / "checkpoints" / "2", pattern)
    ckpt = TrainCheckpointer(str(tmp_path), keep=5)
    assert ckpt.latest_step() == 2  # the directory looks complete
    with caplog.at_level(logging.WARNING, logger="ssd_jax.training.checkpointing"):
        state, meta = ckpt.restore(tiny_state(0))
    assert int(state.step) == 1 and meta == {"data_state": {"position": 1}}
    np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 1, np.float32))
    assert any("step 2" in r.getMessage() and "trying the previous step" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(CheckpointRestoreError, match=r"cannot restore step 2 from .*checkpoints"):
        ckpt.restore(tiny_state(0), step=2)
    ckpt.save(2, tiny_state(2), {"data_state": {"position": 2}})  # training reaches step 2 again
    state, meta = ckpt.restore(tiny_state(0))
    assert int(state.step) == 2 and meta == {"data_state": {"position": 2}}
    ckpt.close()


def test_restore_with_every_step_cut_fails_listing_each(tmp_path):
    save_steps(tmp_path, [1, 2]).close()
    for s in (1, 2):
        cut(tmp_path / "checkpoints" / str(s), "meta/metadata")
    ckpt = TrainCheckpointer(str(tmp_path), keep=5)
    with pytest.raises(CheckpointRestoreError) as info:
        ckpt.restore(tiny_state(0))
    message = str(info.value)
    assert str(tmp_path / "checkpoints") in message
    assert "step 2: " in message and "step 1: " in message
    with pytest.raises(FileNotFoundError, match="no complete checkpoint step 7"):
        ckpt.restore(tiny_state(0), step=7)
    ckpt.close()


@pytest.mark.parametrize("pattern", [
    "variables/d/*",
    "variables/_METADATA", "meta/metadata"])
def test_load_variables_of_a_cut_step_falls_back_or_names_the_step(tmp_path, pattern):
    from ssd_jax.checkpoints import load_variables
    save_steps(tmp_path, [1, 2]).close()
    cut(tmp_path / "checkpoints" / "2", pattern)
    try:
        flat, _ = load_variables(tmp_path)
    except (ValueError, OSError, RuntimeError) as e:
        assert str(tmp_path / "checkpoints" / "2") in str(e)
    else:
        np.testing.assert_array_equal(flat[("params", "w")], np.full((2, 3), 1, np.float32))


# ---- 2. Bad configs ----

def test_typo_in_a_train_py_override_is_refused_with_the_nearest_name(tmp_path):
    """ml_collections' config_flags (train.py) refuses an unknown key before anything starts;
    ``load_config`` does the same (tests/test_models.py::test_config_overrides_and_typos)."""
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(CONFIG),
                          "--workdir", str(tmp_path / "w"), "--config.train.bach_size=3"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0
    assert 'Did you mean "batch_size" instead of "bach_size"?' in out.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["ssd300_coco", "ssd512_coco", "ssdlite_mobilenetv2_320_coco",
                                  "ssdlite_shapes"])
def test_shipped_configs_are_valid(name):
    validate_config(load_config(REPO / "configs" / f"{name}.py"))


@pytest.mark.parametrize("key, value", [
    ("optimizer.lr", 0.0), ("optimizer.lr", -0.01), ("optimizer.lr", float("nan")),
    ("optimizer.weight_decay", -1e-4), ("optimizer.momentum", 1.0),
    ("optimizer.momentum", -0.1), ("train.batch_size", 0), ("train.batch_size", -8),
    ("test.score_thr", -0.1), ("test.score_thr", 1.5), ("test.nms_iou", 0.0),
    ("test.nms_iou", 1.01), ("input_size", 0), ("train.max_boxes", 0)])
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    config = load_config(CONFIG)
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
    with pytest.raises(ValueError, match=rf"{key.replace('.', r'[.]')}={value!r}"):
        validate_config(config)


def test_every_bad_value_is_listed_at_once():
    config = load_config(CONFIG, ["optimizer.lr=-1.0", "test.nms_iou=2.0"])
    with pytest.raises(ValueError, match=r"optimizer\.lr=-1\.0 must be > 0.*test\.nms_iou=2\.0"):
        validate_config(config)


def test_batch_not_divisible_by_devices_is_refused_with_valid_sizes():
    check_batch_divisible(64, 8)
    with pytest.raises(ValueError, match=r"batch_size=30 is not divisible by the 8 devices.*"
                                         r"24 or 32"):
        check_batch_divisible(30, 8)
    with pytest.raises(ValueError, match="not divisible"):
        check_batch_divisible(0, 1)


# ---- 3. Faults: a full disk during a save, a data worker killed ----

_DISK_FULL_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from ssd_jax.training.checkpointing import CheckpointSaveError, TrainCheckpointer
    from test_reliability import tiny_state

    workdir, mode = sys.argv[1], sys.argv[2]
    ckpt = TrainCheckpointer(workdir, keep=5)
    ckpt.save(1, tiny_state(1), {"position": 1})
    if mode == "tmpfs":  # fill the file system
        with open(os.path.join(workdir, "filler"), "wb") as f:
            try:
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
            except OSError:
                pass
    else:  # RLIMIT_FSIZE: writes past 512 bytes fail with EFBIG instead of raising SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
    result = {}
    try:
        ckpt.save(2, tiny_state(2), {"position": 2})
    except CheckpointSaveError as e:
        result["error"] = str(e)
    result["latest"] = ckpt.latest_step()
    ckpt.close()
    if mode == "tmpfs":
        os.remove(os.path.join(workdir, "filler"))
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    ckpt = TrainCheckpointer(workdir, keep=5)  # as a resumed run would
    state, meta = ckpt.restore(tiny_state(0))
    result.update(restored=int(state.step), meta=meta)
    ckpt.save(2, tiny_state(2), {"position": 2})  # space again: the same step saves
    result["after_freeing"] = int(ckpt.restore(tiny_state(0))[0].step)
    print(json.dumps(result))
""")


def _tmpfs_command(mount_dir: pathlib.Path) -> list[str]:
    """A shell in its own mount namespace with a 1 MiB tmpfs at ``mount_dir``, or skip."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                            str(mount_dir)], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    return ["unshare", "-m", "sh", "-c",
            f'mount -t tmpfs -o size=1m tmpfs "{mount_dir}" && exec "$0" "$@"']


@pytest.mark.parametrize("mode", ["tmpfs", "rlimit_fsize"])
def test_disk_full_during_a_save_raises_clearly_and_keeps_earlier_steps(tmp_path, mode):
    mount_dir = tmp_path / "disk"
    mount_dir.mkdir()
    prefix = _tmpfs_command(mount_dir) if mode == "tmpfs" else []
    workdir = mount_dir / "run"
    out = subprocess.run(prefix + [sys.executable, "-c", _DISK_FULL_CHILD, str(workdir), mode,
                                   str(REPO / "tests")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" in result, (result, out.stderr[-3000:])
    reason = "disk full" if mode == "tmpfs" else "file size limit exceeded"
    assert result["error"].startswith(
        f"{reason} while saving step 2 to {workdir / 'checkpoints'}; earlier checkpoints are "
        "intact (latest complete step: 1)")
    assert result["restored"] == 1 and result["meta"] == {"position": 1}
    assert result["latest"] == 1
    assert result["after_freeing"] == 2


def _children() -> dict[int, str]:
    """pid → command line of this process's live children (from /proc; Linux only)."""
    me, found = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers through /proc")
def test_a_killed_data_worker_stops_the_loader_with_an_error_not_a_hang(odd_images, cfg):
    before = set(_children())
    source = CocoSource(odd_images / "ann.json", odd_images, filter_train=True)
    loader = make_train_loader(source, cfg, global_batch_size=4, seed=0, num_workers=2)
    next(loader)
    workers = [pid for pid, cmd in _children().items()
               if pid not in before and "spawn_main" in cmd]
    assert len(workers) == 2, _children()
    os.kill(workers[0], signal.SIGKILL)
    outcome: dict = {}

    def drain():
        try:
            for _ in range(100):
                next(loader)
            outcome["result"] = "continued"
        except Exception as e:  # noqa: BLE001 - the outcome is what is checked
            outcome["result"] = e

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(60)
    try:
        assert not thread.is_alive(), "the loader hung after its worker was killed"
        # grain 0.2.18 notices within about a second and raises.
        assert isinstance(outcome["result"], RuntimeError), outcome
        assert "Worker process was terminated unexpectedly with exit code -9" in str(
            outcome["result"])
    finally:
        for pid in workers[1:]:
            if pid in _children():
                os.kill(pid, signal.SIGKILL)


# ---- 4. Properties of the box maths not covered in test_models / test_data_transforms ----

NUM_ANCHORS, NUM_GTS = 24, 6


@st.composite
def boxes_in(draw, n: int, size: float = 100.0) -> np.ndarray:
    """float32 (n, 4) xyxy boxes with sides of at least 1 inside [0, size]²."""
    out = []
    for _ in range(n):
        x1, y1 = draw(st.floats(0, size - 2)), draw(st.floats(0, size - 2))
        out.append([x1, y1, draw(st.floats(x1 + 1, size)), draw(st.floats(y1 + 1, size))])
    return np.asarray(out, np.float32)


_assign = jax.jit(max_iou_assign, static_argnames=("gt_max_assign_all",))


@settings(max_examples=40, deadline=None)
@given(boxes_in(NUM_ANCHORS), boxes_in(NUM_GTS), st.lists(st.booleans(), min_size=NUM_GTS,
                                                          max_size=NUM_GTS), st.booleans())
def test_every_valid_ground_truth_gets_an_anchor_unless_a_later_one_takes_it(
        anchors, gts, valid, assign_all):
    """min_pos_iou = 0 (SSD): each valid gt claims its best anchor(s), a later gt with the same
    best anchor overwriting (mmdetection's order). So a gt ends with no anchor only when every
    one of its best anchors went to a later gt; no invalid gt is ever assigned."""
    valid = np.asarray(valid)
    assigned = np.asarray(_assign(anchors, gts, valid, pos_iou_thr=0.5, neg_iou_thr=0.5,
                                  min_pos_iou=0.0, gt_max_assign_all=assign_all))
    assert assigned.min() >= -1 and assigned.max() <= NUM_GTS
    if not valid.any():
        assert (assigned == 0).all()
        return
    gt_of = assigned - 1
    assert set(gt_of[assigned > 0].tolist()) <= set(np.flatnonzero(valid).tolist())
    iou = np.asarray(pairwise_iou(gts, anchors))  # (M, A)
    best = [set(np.flatnonzero(iou[i] == iou[i].max())) if assign_all
            else {int(iou[i].argmax())} for i in range(NUM_GTS)]
    for i in np.flatnonzero(valid):
        if (gt_of == i).any():
            continue
        later = set().union(*(best[j] for j in np.flatnonzero(valid) if j > i))
        assert best[i] <= later, (i, best, assigned)
    # and an anchor overlapping a valid gt by >= pos_iou_thr is never negative nor ignored
    strong = (np.where(valid[:, None], iou, -1.0) >= 0.5).any(axis=0)
    assert (assigned[strong] > 0).all()


@st.composite
def image_and_border_boxes(draw):
    """An image and boxes as CocoSource keeps them: w, h >= 1 and any overlap with the image,
    possibly reaching far past its borders (mmdetection does not clip them on load)."""
    h, w = draw(st.integers(16, 96)), draw(st.integers(16, 96))
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        x1 = draw(st.floats(-2.0 * w, w - 0.5))
        y1 = draw(st.floats(-2.0 * h, h - 0.5))
        x2 = draw(st.floats(max(x1 + 1, 0.5), 3.0 * w))
        y2 = draw(st.floats(max(y1 + 1, 0.5), 3.0 * h))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, np.asarray(boxes, np.float32), np.random.default_rng(seed + 1)


@settings(max_examples=60, deadline=None)
@given(image_and_border_boxes())
def test_boxes_crossing_the_border_end_inside_the_input_square(cfg, case):
    """tests/test_data_transforms.py draws boxes inside the image; CocoSource also keeps boxes
    that cross the border. A crop clips them to the patch, and the whole pipeline to [0, S]."""
    image, boxes, rng = case
    crop = T.min_iou_random_crop(image, boxes, np.random.default_rng(rng.integers(2**32)))
    if crop.image is not image:  # cropped (mode 1 returns the input as it is)
        h, w = crop.image.shape[:2]
        assert (crop.boxes >= 0).all() and (crop.boxes[:, 0::2] <= w).all()
        assert (crop.boxes[:, 1::2] <= h).all()
    out = T.train_transform({"boxes": boxes, "labels": np.zeros(len(boxes), np.int32)}, image,
                            rng, cfg)
    b, size = out["boxes"], cfg.input_size
    assert len(out["labels"]) >= 1 and len(b) == len(out["labels"])
    assert (b >= 0).all() and (b <= size).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()

