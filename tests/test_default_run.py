"""The README's first command, ``bash run_default.sh``, end to end in a reduced form.

32 train + 16 val images and the config's schedule (8 epochs = 32 steps of batch 8, four
validations), into a temporary workdir; pip is skipped when .venv already exists. Checks that
every file the README promises is left in the workdir, with its numbers in range.

What the run learns is held elsewhere: a reduced run from scratch stays near chance for its
first few hundred steps (mAP@0.5 0.005-0.011 after 240), so no floor here could tell a broken
loss or assigner from a working one. test_training.py's memorisation test holds that floor, on
this config and through the same train.py and in-loop COCO evaluation.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from conftest import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 1200
NUM_TRAIN, NUM_VAL, STEPS = 32, 16, 32


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[pathlib.Path, str]:
    tmp = tmp_path_factory.mktemp("default_run")
    workdir, data = tmp / "runs" / "shapes", tmp / "data" / "shapes"
    env = subprocess_env(
        fast_compile=False,  # the 128 px model: -O0 would halve its step rate
        RUN_DEFAULT_STEPS="0",  # the config's schedule: STEPS
        RUN_DEFAULT_NUM_TRAIN=str(NUM_TRAIN),
        RUN_DEFAULT_NUM_VAL=str(NUM_VAL),
        RUN_DEFAULT_WORKDIR=str(workdir),
        RUN_DEFAULT_DATA=str(data),
    )
    if (REPO / ".venv" / "bin" / "python").exists():
        env["RUN_DEFAULT_SKIP_INSTALL"] = "1"
    proc = subprocess.run(
        ["bash", str(REPO / "run_default.sh")],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"run_default.sh failed ({proc.returncode}):\n{output[-6000:]}"
    return workdir, output


def test_data_generated(default_run, tmp_path_factory):
    workdir, _ = default_run
    data = workdir.parents[1] / "data" / "shapes"
    train = json.loads((data / "annotations" / "instances_train.json").read_text())
    assert len(train["images"]) == NUM_TRAIN
    assert len(list((data / "val").glob("*.jpg"))) == NUM_VAL


def test_checkpoint_with_a_step(default_run):
    workdir, _ = default_run
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit()]
    assert str(STEPS) in [p.name for p in steps]
    assert (steps[0] / "variables").is_dir()


def test_metrics(default_run):
    workdir, _ = default_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in rows)
    assert any("val/bbox_mAP_50" in row for row in rows)
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["metrics_from"] == "eval.py"
    assert 0 <= final["mAP"] <= final["mAP@0.5"] <= 1, final
    assert 0 <= final["metrics"]["AR@100"] <= 1, final
    logged = {row["step"]: row["loss"] for row in rows if "loss" in row}
    assert max(logged) == STEPS and all(0 < x < 100 for x in logged.values()), logged
    val = [row for row in rows if "val/bbox_mAP_50" in row]
    assert [row["step"] for row in val] == [8, 16, 24, 32]  # every 2 of the 8 epochs
    # eval.py on the final checkpoint gives what training's last validation gave
    assert final["mAP@0.5"] == pytest.approx(val[-1]["val/bbox_mAP_50"], abs=1e-9)
    assert final["mAP"] == pytest.approx(val[-1]["val/bbox_mAP"], abs=1e-9)
    assert final["timings_s"]["total_s"] > 0
    assert final["train_images_per_s"] > 0


def test_pictures(default_run):
    workdir, _ = default_run
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pictures = sorted((workdir / "val_detections").glob("*.png"))
    assert len(pictures) == 8
    assert pictures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_says_what_it_does(default_run):
    _, output = default_run
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"== {stage}" in output, output[-3000:]
    assert "mAP@0.5" in output
