"""``ssd-jax-predict`` (predict.py) end to end on a random-init SSDLite: results with the data
set's ids, drawn images, and never replacing an input or an earlier output."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from ssd_jax.cli.predict import image_ids_for, main

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssdlite_shapes.py"


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def md5(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """A random-init ssdlite_shapes orbax checkpoint whose data had category ids 3, 5, 7, 9."""
    from ssd_jax import Detector
    from ssd_jax.checkpoints import save_variables
    from ssd_jax.config import load_config

    config = load_config(CONFIG)
    directory = tmp_path_factory.mktemp("ckpt") / "shapes"
    save_variables(
        directory,
        Detector(config).variables,
        meta={"class_names": list(config.class_names), "category_ids": [3, 5, 7, 9]},
    )
    return directory


def predict(checkpoint, *args: str) -> int:
    return main(
        [
            "--config",
            str(CONFIG),
            "--checkpoint",
            str(checkpoint),
            "--config.test.score_thr=0.0",
            "--config.test.max_per_img=5",
            *args,
        ]
    )


def test_predict_end_to_end(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_random_rgb(48, 64, seed=1)).save(images / "first.png")
    Image.fromarray(_random_rgb(40, 32, seed=2)).save(images / "second.png")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "out"

    code = predict(checkpoint, str(images), "--out", str(out), "--score-thr", "0.0")

    assert code == 1
    assert "corrupt.jpg" in capsys.readouterr().err
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == 10, "score_thr=0 keeps max_per_img detections per image"
    assert {r["image_id"] for r in results} == {1, 2}  # sorted: corrupt.jpg, first, second
    names = ("ellipse", "rectangle", "triangle", "star")
    for r in results:
        assert set(r) == {"file_name", "image_id", "bbox", "score", "category_id", "category_name"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        # the checkpoint's own category ids, not 0-based labels
        assert r["category_id"] == (3, 5, 7, 9)[names.index(r["category_name"])]
    assert sorted(p.name for p in out.glob("*.png")) == ["first.png", "second.png"]
    assert np.asarray(Image.open(out / "first.png")).shape == (48, 64, 3)


def test_image_ids_from_the_annotation_file_or_coco_file_names(tmp_path):
    ann = tmp_path / "instances.json"
    ann.write_text(
        json.dumps(
            {"images": [{"id": 42, "file_name": "dir/a.jpg"}, {"id": 7, "file_name": "b.jpg"}]}
        )
    )
    assert image_ids_for(["x/a.jpg", "y/b.jpg"], str(ann)) == [42, 7]
    assert image_ids_for(["000000397133.jpg", "000000000139.jpg"]) == [397133, 139]
    assert image_ids_for(["a.jpg", "000000000139.jpg"]) == [0, 1]
    from ssd_jax.errors import InputFileError

    with pytest.raises(InputFileError, match="lists no image named c.jpg"):
        image_ids_for(["c.jpg"], str(ann))


def test_out_equal_to_the_inputs_folder_is_refused_and_nothing_changes(
    tmp_path, checkpoint, capsys
):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_random_rgb(40, 40, seed=3)).save(photos / "logo2.png")
    before = md5(photos / "logo2.png")
    assert predict(checkpoint, str(photos), "--out", str(photos)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logo2.png is an input and would be replaced" in err[0]
    assert md5(photos / "logo2.png") == before
    assert sorted(p.name for p in photos.iterdir()) == ["logo2.png"]


def test_outputs_inside_the_inputs_folder_are_not_read_back(tmp_path, checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_random_rgb(40, 40, seed=4)).save(photos / "a.jpg", quality=95)
    assert predict(checkpoint, str(photos), "--out", str(photos)) == 0  # writes photos/a.png
    drawn = md5(photos / "a.png")
    assert predict(checkpoint, str(photos), "--out", str(photos), "--overwrite") == 0
    results = json.loads((photos / "detections.json").read_text())
    assert {r["file_name"] for r in results} == {str(photos / "a.jpg")}  # not a.png
    assert md5(photos / "a.png") == drawn  # redrawn from a.jpg, the same picture
    assert sorted(p.name for p in photos.glob("*.png")) == ["a.png"]


def test_an_earlier_output_is_kept_unless_overwrite(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_random_rgb(40, 40, seed=5)).save(images / "p.png")
    out = tmp_path / "out"
    assert predict(checkpoint, str(images), "--out", str(out)) == 0
    (out / "detections.json").write_text("[]  # edited by the user")
    capsys.readouterr()
    assert predict(checkpoint, str(images), "--out", str(out)) == 2
    assert "exists (an earlier output?)" in capsys.readouterr().err
    assert (out / "detections.json").read_text() == "[]  # edited by the user"
    assert predict(checkpoint, str(images), "--out", str(out), "--overwrite") == 0
    assert json.loads((out / "detections.json").read_text())


def test_a_missing_input_exits_2_naming_it(tmp_path, checkpoint, capsys):
    missing = tmp_path / "no_such_dir"
    assert predict(checkpoint, str(missing), "--out", str(tmp_path / "out")) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
