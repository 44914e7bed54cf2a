"""A training run as a user meets it. Runs never mix: ``ssd-jax-train`` into a workdir holding an
earlier run is refused (one line, exit status 2, every file as it was) unless ``--resume`` or
``--overwrite``, and ``ssd-jax-benchmark --out`` refuses an existing file the same way. Progress
written to a log file is plain lines."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from test_cli import CONFIG, assert_one_line_error
from test_training import run_env, train_cmd

from builders import SMALL_SSDLITE
from ssd_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pathlib.Path:
    """test_training's data (the same sizes: its compiled train step is reused from the cache)."""
    from ssd_jax.data.synthetic import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=24, num_val=8, image_size=96, seed=1)
    return root


def digest(root: pathlib.Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path → sha256 of the bytes (or 'folder')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "folder"
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(
                pathlib.Path(path).read_bytes()
            ).hexdigest()
    return out


def train(shapes: pathlib.Path, work: pathlib.Path, steps: int, *extra: str):
    return subprocess.run(
        train_cmd(shapes, work, steps, *extra),
        env=run_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


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


def test_training_runs_with_malloc_on_huge_pages(first_run):
    """ssd-jax-train restarts itself with glibc's malloc on transparent huge pages where the
    system has them (ssd_jax.host_memory.restart_with_huge_pages), and says so."""
    _, text = first_run
    expected = "transparent huge pages" if host_memory.huge_pages_possible() else "glibc's"
    assert f"host memory (malloc): {expected}" in text, text[-3000:]


def test_a_second_run_into_the_workdir_is_refused_and_changes_nothing(first_run, shapes, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(first_run[0], work)
    before = digest(work)
    assert {"metrics.jsonl", "curves.png", "checkpoints/2", "best/2", "tensorboard"} <= set(before)
    proc = train(shapes, work, 2)
    assert_one_line_error(proc, f"{work} holds an earlier run", "--resume", "--overwrite")
    assert digest(work) == before


def test_overwrite_moves_the_earlier_run_aside_and_resume_continues_the_new_one(
    first_run, shapes, tmp_path
):
    work = tmp_path / "run"
    shutil.copytree(first_run[0], work)
    before = digest(work)
    proc = train(shapes, work, 2, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and digest(aside[0]) == before
    assert f"moved the earlier run in {work} to {aside[0]}" in proc.stderr
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the new run's only: nothing appended
    assert len(list((work / "tensorboard").iterdir())) == 1

    proc = train(shapes, work, 3, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 2" in proc.stderr
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "3"]


def test_resume_and_overwrite_together_is_a_usage_error(tmp_path, capsys):
    from ssd_jax.cli.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config", CONFIG, "--workdir", str(tmp_path), "--resume", "--overwrite"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--overwrite: not allowed with argument --resume" in err


BENCH = ["--config", CONFIG, "--skip-train", "--skip-input", "--iters", "1", "--batch-size", "1"]


def test_benchmark_refuses_an_existing_out_at_once_and_leaves_it(tmp_path):
    """Refused before any work: not even JAX is imported."""
    out = tmp_path / "b.json"
    out.write_bytes(b'{"earlier": "report"}\n')
    code = (
        "import sys\nfrom ssd_jax.cli.benchmark import main\n"
        f"status = main({BENCH + ['--out', str(out)]!r})\n"
        "assert 'jax' not in sys.modules\nsys.exit(status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert_one_line_error(proc, f"{out} exists", "--overwrite")
    assert out.read_bytes() == b'{"earlier": "report"}\n'


def test_benchmark_overwrite_replaces_the_out_file(tmp_path, capsys):
    from ssd_jax.cli.benchmark import main

    out = tmp_path / "b.json"
    out.write_bytes(b'{"earlier": "report"}\n')
    small = [f"--config.{o}" for o in SMALL_SSDLITE]  # the 32 px SSDLite: compiles in seconds
    assert main(BENCH + small + ["--out", str(out), "--overwrite"]) == 0
    report = json.loads(out.read_text())
    assert report["config"] == "ssdlite_shapes" and "inference" in report
    assert json.loads(capsys.readouterr().out) == report


def test_tensorboard_writer_leaves_torch_out_and_importable(tmp_path):
    """The SummaryWriter is imported without torch (1.2 s at every start where torch is
    installed); it still writes its scalars, and torch still imports afterwards."""
    code = f"""
import sys
from ssd_jax.training.loop import MetricWriter
writer = MetricWriter({str(tmp_path)!r})
writer.write(3, {{"loss": 0.5}})
assert "torch" not in sys.modules
import torch
print(torch.zeros(1).shape)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=run_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "torch.Size([1])"
    assert scalars(tmp_path / "tensorboard") == [(3, "loss", 0.5)]


def scalars(folder: pathlib.Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the TensorBoard event files of ``folder`` (records:
    8-byte length, 4-byte CRC, an Event proto, 4-byte CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12 : 12 + length])
            data = data[16 + length :]
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out
