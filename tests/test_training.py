"""Training end to end: data parallelism, multi-process, kill -9 and resume, schedules."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ssd_jax.config import load_config
from ssd_jax.training import optim

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_env(**extra) -> dict:
    """Environment of a training subprocess; compiled steps are shared through JAX's cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=str(REPO / ".pytest_cache" / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
    if "XLA_FLAGS" not in extra:
        env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pathlib.Path:
    from ssd_jax.data.synthetic import write_shapes_dataset
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=24, num_val=8, image_size=96, seed=1)
    return root


def test_pmap_two_devices_equals_one():
    out = subprocess.run([sys.executable, str(REPO / "tests" / "pmap_equivalence_check.py")],
                         env=run_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 2
    assert r["moved"] > 1e-4          # the step changed the parameters well beyond the tolerance
    assert r["params"] <= 1e-5        # 2 devices == 1 device on the same global batch
    # SyncBN: running statistics of the global batch. Relative 1e-4: the variances of the 1×1
    # maps (4 values per channel) differ in their last float32 digits between the two
    # reductions; unsynchronised statistics (2 images vs 4) would differ by O(1).
    assert r["batch_stats"] <= 1e-4
    assert r["replica_diff"] == 0.0   # replicas stay identical
    assert r["nonfinite"] == {"finite": False, "in_row": 1, "total": 1, "step": 1,
                              "opt_state_kept": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_distributed_training(shapes, tmp_path):
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "distributed_train_driver.py"), str(port), "2",
         str(i), str(shapes), str(tmp_path / "work"), str(tmp_path)],
        env=run_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    a, b = (np.load(tmp_path / f"params_{i}.npz") for i in range(2))
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def train_cmd(shapes: pathlib.Path, workdir: pathlib.Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "ssdlite_shapes.py"),
            "--workdir", str(workdir),
            f"--config.data.ann_file={shapes}/annotations/instances_train.json",
            f"--config.data.img_dir={shapes}/train", "--config.data.val_ann_file=",
            "--config.data.workers=1", "--config.input_size=96", "--config.train.batch_size=4",
            f"--config.train.num_steps={steps}", "--config.train.ckpt_every=2",
            "--config.train.keep_ckpts=10", "--config.train.log_every=1", *extra]


def final_params(workdir: pathlib.Path) -> dict:
    from ssd_jax.checkpoints import load_variables
    flat, _ = load_variables(workdir / "checkpoints")
    return flat


def test_kill_and_resume_matches_uninterrupted(shapes, tmp_path):
    steps = 8
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(shapes, straight, steps), env=run_env(), cwd=REPO, check=True,
                   capture_output=True, timeout=900)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(shapes, killed, steps), env=run_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and not (killed / "checkpoints" / "4").exists():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, possibly mid-save
    proc.wait()
    assert (killed / "checkpoints" / "4").exists() or (killed / "checkpoints" / "2").exists()
    # A save cut short leaves only orbax's temporary directory; make sure one is there too.
    (killed / "checkpoints" / "6.orbax-checkpoint-tmp-0").mkdir(exist_ok=True)
    subprocess.run(train_cmd(shapes, killed, steps, "--resume"), env=run_env(), cwd=REPO,
                   check=True, capture_output=True, timeout=900)

    a, b = final_params(straight), final_params(killed)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=str(k))
    log = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps


def test_short_run_lowers_the_loss(shapes, tmp_path):
    work = tmp_path / "run"
    # mmdetection's SSDLite init (head convs Normal std 0.001: logits start near 0, loss 9.4)
    # moves little in 40 steps of warm-up at lr 0.025 (loss 9.0); without warm-up at lr 0.1
    # (0.2 per 8 images) it falls to about 0.6 of the start.
    subprocess.run(train_cmd(shapes, work, 40, "--config.schedule.warmup_iters=0",
                             "--config.optimizer.lr=0.2"),
                   env=run_env(), cwd=REPO, check=True, capture_output=True, timeout=900)
    losses = [json.loads(line)["loss"] for line in (work / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert np.isfinite(losses).all() and last < 0.7 * first, (first, last)


def test_lr_schedules():
    c = load_config(REPO / "configs" / "ssd300_coco.py")
    s = optim.lr_schedule(c, 64, steps_per_epoch=100)
    assert float(s(0)) == pytest.approx(2e-3 * 0.001)
    assert float(s(250)) == pytest.approx(2e-3 * (0.001 + 0.999 * 0.5))
    assert float(s(1500)) == pytest.approx(2e-3)
    assert float(s(16 * 100)) == pytest.approx(2e-4)      # ×0.1 at epoch 16
    assert float(s(22 * 100 + 5)) == pytest.approx(2e-5)  # ×0.01 at epoch 22
    assert float(optim.lr_schedule(c, 32, 100)(1500)) == pytest.approx(1e-3)  # linear scaling
    lite = load_config(REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py")
    s = optim.lr_schedule(lite, 192, steps_per_epoch=10)
    assert float(s(600)) == pytest.approx(0.015 * 0.5 * (1 + np.cos(np.pi * 60 / 120)))
    assert float(s(605)) == float(s(600))                 # by epoch
    assert float(s(1200)) == pytest.approx(0.0, abs=1e-12)


def test_sgd_matches_torch():
    torch = pytest.importorskip("torch")
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
