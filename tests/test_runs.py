"""A training run as a user meets it: its progress written to a log file is plain lines."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
from test_training import run_env, train_cmd

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pathlib.Path:
    """test_training's data (the same sizes: its compiled train step is reused from the cache)."""
    from ssd_jax.data.synthetic import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=24, num_val=8, image_size=96, seed=1)
    return root


@pytest.fixture(scope="module")
def first_run(shapes, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """2 steps with validation into an existing empty folder, stdout and stderr into one file
    (not a terminal); the workdir and what was written."""
    work = tmp_path_factory.mktemp("first") / "run"
    work.mkdir()  # an empty folder is fine to train into
    log = work.parent / "train.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            train_cmd(
                shapes,
                work,
                2,
                f"--config.data.val_ann_file={shapes}/annotations/instances_val.json",
                f"--config.data.val_img_dir={shapes}/val",
            ),
            env=run_env(),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return work, text


def test_progress_in_a_log_file_is_plain_lines(first_run):
    _, text = first_run
    assert "\x1b[" not in text and "\r" not in text, text[-2000:]
    # The bar is made once the first step (the compile) has returned: its rate leaves it out.
    compiled = text.index("step 1 compiles the train step first")
    assert text.index("train: 1/2 step (50%)") > compiled, text
    assert re.search(
        r"^train: 2/2 step \(100%\), [\d.]+ step/s, \d\d:\d\d in all, loss=", text, re.M
    )
    assert re.search(r"^eval: 0/8 img \(0%\)$", text, re.M), text
    assert re.search(r"^eval: 8/8 img \(100%\), [\d.]+ img/s, \d\d:\d\d in all$", text, re.M), text
