"""Training end to end: data parallelism, multi-process, kill -9 and resume, schedules."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from builders import SMALL_SSDLITE
from conftest import require, subprocess_env
from ssd_jax.config import load_config
from ssd_jax.training import optim

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_env(fast_compile: bool = True, **extra: str) -> dict:
    """Environment of a training subprocess (conftest.subprocess_env; ``XLA_FLAGS=`` in
    ``extra`` adds flags such as a forced device count)."""
    return subprocess_env(fast_compile=fast_compile, **extra)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pathlib.Path:
    from ssd_jax.data.synthetic import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=24, num_val=8, image_size=96, seed=1)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_driver(shapes, work, out, num_processes: int, ann_file=None, **env) -> None:
    """tests/distributed_train_driver.py as ``num_processes`` processes on localhost."""
    port = free_port()
    extra = [str(ann_file)] if ann_file else []
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "distributed_train_driver.py"),
                str(port),
                str(num_processes),
                str(i),
                str(shapes),
                str(work),
                str(out),
                *extra,
            ],
            env=run_env(**env),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def interleaved_annotations(shapes: pathlib.Path, out: pathlib.Path, processes: int, per: int):
    """The train annotations with images reordered as ``processes`` contiguous shards, ``per``
    images each per step, interleave into global batches: one process reading this file in
    order sees the multi-process run's global batches."""
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    images = data["images"]
    shard = len(images) // processes
    order = [
        images[p * shard + step * per + i]
        for step in range(shard // per)
        for p in range(processes)
        for i in range(per)
    ]
    data["images"] = order
    out.write_text(json.dumps(data))
    return out


def test_two_process_distributed_training(shapes, tmp_path):
    """Two jax.distributed processes (1 CPU device each, global batch 4) end with the same
    parameters, which moved from their start, and which equal one process training on the same
    global batches (the whole batch on one device: SyncBN, one avg_factor)."""
    run_driver(shapes, tmp_path / "work", tmp_path, 2)
    a, b = (np.load(tmp_path / f"params_{i}.npz") for i in range(2))
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    init = np.load(tmp_path / "init_0.npz")
    params = [k for k in a.files if k.startswith("params/")]
    moved = [k for k in params if not np.array_equal(a[k], init[k])]
    # (zero-initialised biases of layers whose output the 32 px model never uses stay 0)
    assert len(moved) >= 0.9 * len(params), sorted(set(params) - set(moved))

    one = tmp_path / "one"
    one.mkdir()
    ann = interleaved_annotations(shapes, tmp_path / "interleaved.json", processes=2, per=2)
    run_driver(shapes, one / "work", one, 1, ann)
    c = np.load(one / "params_0.npz")
    assert set(c.files) == set(a.files)
    for k in a.files:
        # float32 sums in another order (gloo's all-reduce against one device's sums)
        scale = max(np.abs(init[k]).max(), np.abs(a[k]).max())
        err = np.abs(c[k] - a[k]).max()
        assert err <= 1e-5 * scale + 1e-7, (k, err, scale)
        if k in moved and "kernel" in k:  # the tolerance is far below the step itself
            assert np.abs(a[k] - init[k]).max() > 100 * err, k


#: The plumbing tests (processes, kill and resume, refusals) train the 32 px SSDLite of
#: per_gpu_check.py.
SMALL = tuple(f"--config.{o}" for o in SMALL_SSDLITE)


def train_cmd(
    shapes: pathlib.Path, workdir: pathlib.Path, steps: int, *extra: str, model=SMALL
) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(REPO / "configs" / "ssdlite_shapes.py"),
        "--workdir",
        str(workdir),
        f"--config.data.ann_file={shapes}/annotations/instances_train.json",
        f"--config.data.img_dir={shapes}/train",
        "--config.data.val_ann_file=",
        "--config.data.workers=1",
        *model,
        "--config.train.batch_size=4",
        f"--config.train.num_steps={steps}",
        "--config.train.ckpt_every=2",
        "--config.train.keep_ckpts=10",
        "--config.train.log_every=1",
        *extra,
    ]


def final_params(workdir: pathlib.Path) -> dict:
    from ssd_jax.checkpoints import load_variables

    flat, _ = load_variables(workdir / "checkpoints")
    return flat


STEPS = 8


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted 8-step run (checkpoints every 2 steps, metrics every step)."""
    work = tmp_path_factory.mktemp("straight")
    subprocess.run(
        train_cmd(shapes, work, STEPS),
        env=run_env(),
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return work


def metrics_rows(workdir: pathlib.Path) -> dict[int, dict]:
    """The last row logged for each step (a resumed run logs some steps twice)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def assert_same_params(a: pathlib.Path, b: pathlib.Path) -> None:
    pa, pb = final_params(a), final_params(b)
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=0, atol=1e-6, err_msg=str(k))


def test_kill_and_resume_matches_uninterrupted(shapes, straight, tmp_path):
    """kill -9 as soon as the first checkpoint is complete; --resume continues from a step
    before the last, and ends with the uninterrupted run's weights."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(shapes, killed, STEPS),
        env=run_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 900
    while time.time() < deadline and not (killed / "checkpoints" / "2").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, possibly mid-save
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill landed"
    saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < STEPS, saved
    # A save cut short leaves only orbax's temporary directory; make sure one is there too.
    (killed / "checkpoints" / "6.orbax-checkpoint-tmp-0").mkdir(exist_ok=True)
    resumed = subprocess.run(
        train_cmd(shapes, killed, STEPS, "--resume"),
        env=run_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = re.search(r"resumed from step (\d+)", resumed.stderr)
    assert step and int(step.group(1)) == saved[-1] < STEPS, resumed.stderr[-3000:]
    assert_same_params(straight, killed)
    assert max(metrics_rows(killed)) == STEPS


def test_resume_after_a_cut_checkpoint_restores_the_previous_step_with_data_order_and_lr(
    straight, shapes, tmp_path
):
    """The last step's files cut mid-write: --resume warns, restores step 6 (weights, optimizer,
    data position, LR schedule) and steps 7-8 repeat the uninterrupted run's exactly."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    manifest = cut / "checkpoints" / str(STEPS) / "train_state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    proc = subprocess.run(
        train_cmd(shapes, cut, STEPS, "--resume"),
        env=run_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"cannot restore checkpoint step {STEPS}" in proc.stderr
    assert "resumed from step 6" in proc.stderr
    ours, theirs = metrics_rows(cut), metrics_rows(straight)
    for step in (STEPS - 1, STEPS):
        for key in ("loss", "loss_cls", "loss_bbox", "lr"):
            assert ours[step][key] == pytest.approx(theirs[step][key], rel=1e-6, abs=1e-9), (
                step,
                key,
            )
    assert_same_params(straight, cut)


def test_resume_with_another_config_is_refused_naming_what_differs(straight, shapes, tmp_path):
    """Resuming with data of another class count (the head's shapes change) is one line,
    exit status 2, and leaves the checkpoints alone; it never falls back to an older step."""
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(straight, changed)
    coco = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    coco["categories"] = coco["categories"][:3]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] <= 3]
    ann = tmp_path / "three.json"
    ann.write_text(json.dumps(coco))
    steps_before = sorted(p.name for p in (changed / "checkpoints").iterdir())
    proc = subprocess.run(
        train_cmd(shapes, changed, STEPS + 2, "--resume", f"--config.data.ann_file={ann}"),
        env=run_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert f"checkpoint step {STEPS} in" in errors[0]
    assert "saved for another model or config" in errors[0]
    assert sorted(p.name for p in (changed / "checkpoints").iterdir()) == steps_before


def test_lr_schedules():
    c = load_config(REPO / "configs" / "ssd300_coco.py")
    s = optim.lr_schedule(c, 64, steps_per_epoch=100)
    assert float(s(0)) == pytest.approx(2e-3 * 0.001)
    # mmengine's LinearLR reaches 1 at iteration end - 1 = 499
    assert float(s(250)) == pytest.approx(2e-3 * (0.001 + 0.999 * 250 / 499))
    assert float(s(499)) == pytest.approx(2e-3)
    assert float(s(1500)) == pytest.approx(2e-3)
    assert float(s(16 * 100)) == pytest.approx(2e-4)  # ×0.1 at epoch 16
    assert float(s(22 * 100 + 5)) == pytest.approx(2e-5)  # ×0.01 at epoch 22
    assert float(optim.lr_schedule(c, 32, 100)(1500)) == pytest.approx(1e-3)  # linear scaling
    c.optimizer.auto_scale_lr = False  # mmdetection's default
    assert float(optim.lr_schedule(c, 32, 100)(1500)) == pytest.approx(2e-3)
    lite = load_config(REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py")
    s = optim.lr_schedule(lite, 192, steps_per_epoch=10)
    assert float(s(600)) == pytest.approx(0.015 * 0.5 * (1 + np.cos(np.pi * 60 / 120)))
    assert float(s(605)) == float(s(600))  # by epoch
    assert float(s(1200)) == pytest.approx(0.0, abs=1e-12)


def test_sgd_matches_torch():
    torch = require("torch")
    import jax.numpy as jnp
    import optax

    c = load_config(REPO / "configs" / "ssd300_coco.py")
    tx = optim.sgd(c, optax.constant_schedule(0.1))
    p = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    state = tx.init(p)
    tp = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for g in ([0.5, 0.1, -0.3], [0.2, -0.4, 0.1], [0.0, 0.3, 0.3]):
        upd, state = tx.update({"w": jnp.asarray(g)}, state, p)
        p = optax.apply_updates(p, upd)
        topt.zero_grad()
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(np.asarray(p["w"]), tp.detach().numpy(), rtol=1e-6)
