"""Training trajectories against mmdetection's own: ``train.py`` from a fixture checkpoint on
tests/data/trajectory (4 images, no random augmentation, data in file order), 8 SGD iterations
with warm-up and the config's schedule, compared per iteration with the losses, learning rates
and final weights that mmdetection 3.3.0's ``Runner`` recorded (scripts/
make_trajectory_reference.py; tests/data/trajectory/README.md says how and what matters).

SSD300 in float32 (tolerance 1e-4 relative) from its fixture, SSDLite in float64 on both sides
(1e-6) from a warm start stored beside its reference (from the fixture's random weights its
training is chaotic in mmdetection itself), at the iterations each reference determines to its
tolerance (its ``noise``).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import checkpoint_file, subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "trajectory"
MODELS = {
    "ssd300_coco": "configs/ssd300_coco.py",
    "ssdlite_mobilenetv2_320_coco": "configs/ssdlite_mobilenetv2_320_coco.py",
}


def reference(name: str) -> dict:
    return json.loads((DATA / f"{name}_reference.json").read_text())


def start_checkpoint(name: str, ref: dict) -> pathlib.Path:
    """Where the reference run started: a warm start stored beside it (SSDLite), else the
    fixture's checkpoint."""
    start = ref.get("start_checkpoint", "")
    return REPO / start if start.startswith("tests/") else checkpoint_file(name)


def overrides(name: str, ref: dict) -> list[str]:
    """train.py settings equal to the reference run's (see the reference's own fields)."""
    s, w, o = ref["schedule"], ref["warmup"], ref["optimizer"]
    if isinstance(w, str):
        w = json.loads(w.replace("'", '"'))
    out = [
        f"data.ann_file={DATA / ref['data']['ann_file']}",
        f"data.img_dir={DATA / ref['data']['img_dir']}",
        "data.val_ann_file=",
        "data.shuffle=False",
        "data.workers=0",
        f"data.min_size={ref['data']['filter_cfg']['min_size']}",
        # no random augmentation: Resize and PackDetInputs only
        "augment.expand_ratio=(1.0, 1.0)",
        "augment.min_iou_crop=False",
        "augment.photometric=False",
        "augment.flip_prob=0.0",
        f"train.batch_size={ref['batch_size']}",
        f"train.per_gpu_batch={ref['batch_size']}",
        f"train.num_steps={ref['num_iters']}",
        "train.log_every=1",
        "train.ckpt_every=1",
        f"train.keep_ckpts={ref['num_iters']}",
        "train.eval_every_epochs=0",
        f"train.load_from={start_checkpoint(name, ref)}",
        f"optimizer.lr={o['lr']}",
        f"optimizer.momentum={o['momentum']}",
        f"optimizer.weight_decay={o['weight_decay']}",
        "optimizer.auto_scale_lr=False",
        f"schedule.warmup_iters={w['end']}",
        f"schedule.warmup_start_factor={w['start_factor']}",
        f"schedule.epochs={ref['epochs']}",
        f"schedule.dataset_repeat={ref['data']['dataset_repeat']}",
    ]
    if s["type"] == "multistep":
        out += [
            "schedule.type='multistep'",
            f"schedule.milestones={tuple(s['milestones_epochs'])}",
            f"schedule.gamma={s['gamma']}",
        ]
    else:
        assert s["type"] == "cosine" and s["T_max_epochs"] == ref["epochs"], s
        out += ["schedule.type='cosine'"]
    if ref["dtype"] == "float64":
        out.append("precision='fp64'")
    return out


@pytest.fixture(scope="module", params=list(MODELS))
def run(request, tmp_path_factory) -> tuple[str, dict, pathlib.Path]:
    name = request.param
    ref = reference(name)
    workdir = tmp_path_factory.mktemp(name)
    env = subprocess_env()  # -O0: 126 s against 138 s for the two runs, alone
    if ref["dtype"] == "float64":
        env["JAX_ENABLE_X64"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / MODELS[name]),
            "--workdir",
            str(workdir),
            *[f"--config.{o}" for o in overrides(name, ref)],
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return name, ref, workdir


def logged(workdir: pathlib.Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def comparable(ref: dict) -> list[int]:
    """Iterations whose losses the reference determines to ``tolerance`` (its ``noise``)."""
    iters = ref["noise"]["comparable_iters"]
    assert iters and iters == list(range(1, len(iters) + 1)), iters
    return iters


def test_every_iteration_matches_mmdetection(run):
    """lr at every iteration; losses at every iteration the reference determines (its
    ``noise``: float32 rounding for SSD300, a 1e-12 perturbation of the initial weights for
    SSDLite): all 8 for both."""
    name, ref, workdir = run
    ours = logged(workdir)
    tol = ref["tolerance"]
    records = ref["records"]
    assert sorted(ours) == [r["iter"] for r in records] == list(range(1, ref["num_iters"] + 1))
    held = comparable(ref)
    assert held == list(range(1, ref["num_iters"] + 1)), f"only iterations {held} determined"
    problems = []
    lr_tol = 1e-12 if ref["dtype"] == "float64" else 1e-6  # our schedule is float32 in fp32
    for r in records:
        row = ours[r["iter"]]
        if abs(row["lr"] - r["lr"]) > lr_tol * abs(r["lr"]):
            problems.append(f"iter {r['iter']}: lr {row['lr']!r} vs {r['lr']!r}")
        if r["iter"] not in held:
            continue
        for key in ("loss", "loss_cls", "loss_bbox"):
            rel = abs(row[key] - r[key]) / abs(r[key])
            if rel > tol:
                problems.append(
                    f"iter {r['iter']}: {key} {row[key]:.9g} vs {r[key]:.9g} "
                    f"(relative {rel:.2g} > {tol})"
                )
    assert not problems, "\n".join(problems)
    # the held iterations move the loss well beyond the tolerance
    losses = [r["loss"] for r in records if r["iter"] in held]
    assert abs(losses[-1] / losses[0] - 1) > 100 * tol


def checksum_problems(
    ours: dict[str, np.ndarray], theirs: dict[str, dict], tol: float, label: str
) -> list[str]:
    """Checksums (sum, sum of squares, sum of |x|; layout-free) of ours against theirs."""
    problems = []
    for key, ref in theirs.items():
        if key.endswith("num_batches_tracked"):
            continue
        x = ours[key]
        got = {"sum": x.sum(), "sum_sq": np.square(x).sum(), "sum_abs": np.abs(x).sum()}
        for stat in ("sum_sq", "sum_abs"):
            if abs(got[stat] - ref[stat]) > tol * abs(ref[stat]):
                problems.append(f"{label} {key} {stat}: {got[stat]!r} vs {ref[stat]!r}")
        # a sum near 0 is relative to the scale of the tensor
        if abs(got["sum"] - ref["sum"]) > tol * ref["sum_abs"]:
            problems.append(f"{label} {key} sum: {got['sum']!r} vs {ref['sum']!r}")
    return problems


def test_weights_after_each_update_match_mmdetection(run):
    """The weights (and for SSDLite the BatchNorm running statistics, torch's unbiased running
    variance) after each of the 8 updates, every one of which the reference determines
    (``noise.checksums_after_iter_rel`` ≤ tolerance / 10)."""
    from ssd_jax.checkpoints import load_variables
    from ssd_jax.porting.convert import flat_to_torch_name

    name, ref, workdir = run
    tol = ref["tolerance"]
    noise = ref["noise"]["checksums_after_iter_rel"]
    held = [i for i in range(1, ref["num_iters"] + 1) if noise[i - 1] <= tol / 10]
    assert held == list(range(1, ref["num_iters"] + 1)), noise  # every update determined
    problems, moved = [], 0
    for i in held:
        flat, _ = load_variables(workdir / "checkpoints", step=i)
        ours = {flat_to_torch_name(k): np.asarray(v, np.float64) for k, v in flat.items()}
        theirs = ref["checksums_after_iter"][i - 1]
        problems += checksum_problems(ours, theirs, tol, f"after iter {i}:")
        moved += sum(
            theirs[k]["sum_sq"] != v["sum_sq"]
            for k, v in ref["initial_checksums"].items()
            if "running" not in k and not k.endswith("num_batches_tracked")
        )
    assert not problems, "\n".join(problems)
    assert moved >= 1  # some checked tensor moved
