"""Whole training runs here and in mmdetection 3.3.0, side by side, from the same initial weights.

    python scripts/convergence_vs_mmdet.py [--seeds 0 1 2] [--epochs 8] [--warm-steps 1500]
        [--num-train 1000] [--num-val 200] [--work /tmp/convergence]
        [--out docs/benchmarks/convergence_vs_mmdet.json]

The model is ``configs/ssdlite_shapes.py`` (SSDLite, MobileNetV2 to its stride-16 layer, 128 px,
4 classes) with SSDLite's full training augmentation (Expand 1–4, MinIoURandomCrop,
PhotoMetricDistortion, flip 0.5), its warm-up and cosine schedule, validated every epoch on
both sides. Its mmdetection twin is mmdetection's own SSDLite config with the same settings
(``scripts/mmdet_convergence_worker.py``, run with ``$MMDET_PYTHON``, default
``/tmp/mmdet_ref/venv/bin/python``; see /work/shared/mmdet_reference/README.md).

The start: from mmdetection's random initialisation this recipe stays near chance level for
longer than a CPU run can afford (mAP 0.001 after 6 epochs of 1,000 images), where any two
trainers agree. So by default every run starts from one warm start: mmdetection's
initialisation (seed 0) trained here for ``--warm-steps`` steps with the config's own short
recipe (flips only), converted to the twin's state dict. ``--warm-steps 0`` starts each seed from
mmdetection's own initialisation instead.

For each seed the twin is proven by loading the start into both networks and comparing the raw
head outputs and the anchors; then ``train.py`` (``train.load_from`` = the start, ``train.seed``
= the seed) and mmdetection's Runner (``randomness.seed`` = the seed) each train on the same
generated data (``ssd_jax.data.synthetic``) for the same number of images, and their per-epoch
COCO metrics are recorded. The runs alternate (ours, mmdetection, next seed).

The claim holds when |mean AP ours − mean AP mmdetection| ≤ max(0.01, pooled std) (AP: COCO
mAP@[.5:.95] of the last epoch). Writes the JSON (keys ``ours.ap``, ``mmdet.ap``, one value per
seed; curves; the start; machine; versions) and a picture of both sides' curves next to it
(``.png``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKER = REPO / "scripts" / "mmdet_convergence_worker.py"
CONFIG = REPO / "configs" / "ssdlite_shapes.py"
#: SSDLite's training augmentation (mmdetection's ssdlite_mobilenetv2-scratch_8xb24-600e_coco
#: train_pipeline), which configs/ssdlite_shapes.py turns off for its short default run.
FULL_AUGMENTATION = (
    "augment.expand_ratio=(1.0, 4.0)",
    "augment.min_iou_crop=True",
    "augment.photometric=True",
    "augment.flip_prob=0.5",
)
ECHO = re.compile(r"validation|mmdet seed .*(ETA|val)|Error|error:")


def run_config(args: argparse.Namespace, data: pathlib.Path):
    from ssd_jax.config import load_config

    return load_config(CONFIG, overrides(args, data))


def data_overrides(args: argparse.Namespace, data: pathlib.Path) -> list[str]:
    """The generated data set in ``data``, read by ``--workers`` processes."""
    return [
        f"data.ann_file={data}/annotations/instances_train.json",
        f"data.img_dir={data}/train",
        f"data.val_ann_file={data}/annotations/instances_val.json",
        f"data.val_img_dir={data}/val",
        f"data.workers={args.workers}",
    ]


def overrides(args: argparse.Namespace, data: pathlib.Path) -> list[str]:
    return [
        *FULL_AUGMENTATION,
        *data_overrides(args, data),
        f"schedule.epochs={args.epochs}",
        "train.eval_every_epochs=1",
        f"train.ckpt_every={10**9}",
    ]


def twin_spec(config, data: pathlib.Path, args: argparse.Namespace) -> dict:
    """What mmdetection's side needs of the config: the model, anchors, recipe and data."""
    m, s, o = config.model, config.schedule, config.optimizer
    lr = o.lr * (config.train.batch_size / o.base_batch_size if o.auto_scale_lr else 1.0)
    assert s.type == "cosine", s.type
    assert tuple(config.augment.expand_ratio) == (1.0, 4.0) and config.augment.min_iou_crop
    return dict(
        input_size=config.input_size,
        num_classes=m.num_classes,
        class_names=list(config.class_names),
        out_indices=list(m.backbone.out_indices),
        neck_in_channels=list(m.neck.in_channels),
        neck_out_channels=list(m.neck.out_channels),
        strides=list(m.anchors.strides),
        min_sizes=list(m.anchors.min_sizes),
        max_sizes=list(m.anchors.max_sizes),
        ratios=[list(r) for r in m.anchors.ratios],
        lr=lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        warmup_iters=s.warmup_iters,
        warmup_start_factor=s.warmup_start_factor,
        epochs=s.epochs,
        dataset_repeat=s.dataset_repeat,
        batch_size=config.train.batch_size,
        val_interval=config.train.eval_every_epochs,
        workers=args.workers,
        data=dict(
            root=str(data),
            train_ann="annotations/instances_train.json",
            train_img="train/",
            val_ann="annotations/instances_val.json",
            val_img="val/",
        ),
    )


def stream(cmd: list[str], log: pathlib.Path) -> None:
    """Run ``cmd``, its output to ``log``; echo its validation and progress lines."""
    from tqdm import tqdm

    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        for line in proc.stdout:
            f.write(line)
            for part in line.replace("\r", "\n").splitlines():
                if ECHO.search(part):
                    tqdm.write("  " + part.strip()[:200])
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {rc}); see {log}")


def train_ours(workdir: pathlib.Path, settings: list[str], log: pathlib.Path) -> None:
    """``train.py`` on CONFIG with ``settings`` (config overrides) into a fresh ``workdir``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(CONFIG)]
    cmd += ["--workdir", str(workdir), *[f"--config.{o}" for o in settings]]
    stream(cmd, log)


def twin_check(config, init: pathlib.Path, probe: pathlib.Path) -> dict:
    """Our network with mmdetection's initial weights against mmdetection's raw outputs."""
    from ssd_jax import Detector

    det = Detector.from_checkpoint(config, init)
    ref = np.load(probe)
    x = ref["input_nchw"].transpose(0, 2, 3, 1)
    cls, box = det.forward(x)
    worst = 0.0
    for k, (c, b) in enumerate(zip(cls, box, strict=True)):
        for ours, key in ((c, f"cls_{k}"), (b, f"box_{k}")):
            theirs = ref[key].transpose(0, 2, 3, 1).astype(np.float64)
            ours = np.asarray(ours, np.float64)
            assert ours.shape == theirs.shape, (key, ours.shape, theirs.shape)
            worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
    anchors = max(float(np.abs(a - ref[f"anchors_{k}"]).max()) for k, a in enumerate(det.anchors()))
    return {"head_outputs_max_rel": worst, "anchors_max_abs_px": anchors}


def warm_overrides(args: argparse.Namespace, data: pathlib.Path, steps_per_epoch: int) -> list[str]:
    """The warm start's run: the config's own short recipe (flips only), ``--warm-steps``
    steps, one validation at its end."""
    epochs = args.warm_steps // steps_per_epoch
    return [
        *data_overrides(args, data),
        f"schedule.epochs={epochs}",
        f"train.eval_every_epochs={epochs}",
        f"train.ckpt_every={10**9}",
        "train.seed=0",
    ]


def checkpoint_to_state_dict(workdir: pathlib.Path, skeleton: pathlib.Path, out: pathlib.Path):
    """Our last checkpoint in ``workdir`` as a torch state dict with the keys and shapes of
    ``skeleton`` (the twin's own state dict), saved to ``out``."""
    import torch

    from ssd_jax.checkpoints import load_variables
    from ssd_jax.porting.convert import torch_to_flax_name

    flat, meta = load_variables(workdir / "checkpoints")
    theirs = torch.load(skeleton, map_location="cpu", weights_only=False)["state_dict"]
    state, used = {}, set()
    for key, ref in theirs.items():
        target = torch_to_flax_name(key, theirs)
        if target is None:  # num_batches_tracked: unused by the recipe's BatchNorm (momentum)
            state[key] = ref.clone()
            continue
        path = (target[0],) + target[1]
        value = np.asarray(flat[path], np.float32)
        if value.ndim == 4:  # HWIO → OIHW
            value = value.transpose(3, 2, 0, 1)
        assert value.shape == tuple(ref.shape), (key, value.shape, tuple(ref.shape))
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
        used.add(path)
    assert used == set(flat), sorted(set(flat) - used)[:5]
    torch.save({"state_dict": state, "meta": {"from": str(workdir), "step": meta.get("step")}}, out)


def ours_curves(workdir: pathlib.Path) -> dict:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/bbox_mAP" in r]
    train = [r for r in rows if "loss" in r]
    return dict(
        step=[r["step"] for r in val],
        mAP=[r["val/bbox_mAP"] for r in val],
        mAP_50=[r["val/bbox_mAP_50"] for r in val],
        mAP_75=[r.get("val/bbox_mAP_75") for r in val],
        loss_steps=[r["step"] for r in train],
        loss=[r["loss"] for r in train],
    )


def pooled_std(a: list[float], b: list[float]) -> float:
    na, nb = len(a), len(b)
    if na + nb <= 2:
        return float("nan")
    va = np.var(a, ddof=1) if na > 1 else 0.0
    vb = np.var(b, ddof=1) if nb > 1 else 0.0
    return float(math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)))


def verdict(ours: list[float], theirs: list[float]) -> dict:
    diff = float(np.mean(ours) - np.mean(theirs))
    std = pooled_std(ours, theirs)
    threshold = max(0.01, std) if math.isfinite(std) else 0.01
    return dict(
        mean_ours=float(np.mean(ours)),
        mean_mmdet=float(np.mean(theirs)),
        std_ours=float(np.std(ours, ddof=1)) if len(ours) > 1 else None,
        std_mmdet=float(np.std(theirs, ddof=1)) if len(theirs) > 1 else None,
        difference=diff,
        pooled_std=std,
        threshold=threshold,
        holds=abs(diff) <= threshold,
    )


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("mAP", "mAP_50"), ("COCO mAP@[.5:.95]", "mAP@0.5")):
        for side, colour, label in (
            ("ours", "tab:blue", "ssd_jax"),
            ("mmdet", "tab:orange", "mmdetection"),
        ):
            for i, c in enumerate(result[side]["curves"]):
                ax.plot(
                    c["epoch"],
                    c[key],
                    "-o",
                    ms=3,
                    color=colour,
                    alpha=0.75,
                    label=label if i == 0 else None,
                )
        start = result.get("start", {})
        if key in start:
            ax.plot([0], [start[key]], "ks", ms=5, label="start (both sides)")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    v = result["claim"]["ap"]
    fig.suptitle(
        f"ssdlite_shapes, full augmentation, {len(result['seeds'])} seeds per side: "
        f"mean AP {v['mean_ours']:.4f} (ssd_jax) vs {v['mean_mmdet']:.4f} (mmdetection)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mmdet_init(args: argparse.Namespace, spec: pathlib.Path, seed: int, work: pathlib.Path):
    """mmdetection's own initialisation of the twin: work/init_seedSEED.pth and its probe."""
    subprocess.run(
        [args.mmdet_python, str(WORKER), "init", str(spec), str(seed), str(work)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument(
        "--warm-steps",
        type=int,
        default=1500,
        help="start every run from one warm start: mmdetection's initialisation (seed 0) "
        "trained here for this many steps with the config's own recipe (flips only); 0: each "
        "seed from mmdetection's own random initialisation (slow to leave chance level)",
    )
    p.add_argument("--workers", type=int, default=1, help="data loader processes on each side")
    p.add_argument("--work", default="/tmp/convergence")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "convergence_vs_mmdet.json"))
    p.add_argument(
        "--mmdet-python", default=os.environ.get("MMDET_PYTHON", "/tmp/mmdet_ref/venv/bin/python")
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if not os.path.exists(args.mmdet_python):
        print(
            f"error: no mmdetection python at {args.mmdet_python} "
            "(bash ../shared/mmdet_reference/setup.sh)",
            file=sys.stderr,
        )
        return 2

    from tqdm import tqdm

    from ssd_jax import provenance
    from ssd_jax.progress import progress

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "annotations" / "instances_val.json").exists():
        from ssd_jax.data.synthetic import write_shapes_dataset

        write_shapes_dataset(data, args.num_train, args.num_val, image_size=128, seed=0)
    config = run_config(args, data)
    if args.num_train % config.train.batch_size:
        print(
            "error: --num-train must be a multiple of the batch size (8): mmdetection's "
            "last partial batch would add iterations",
            file=sys.stderr,
        )
        return 2
    spec = twin_spec(config, data, args)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))

    result: dict = {
        "script": "scripts/convergence_vs_mmdet.py",
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": provenance.machine(),
        "versions": provenance.versions(),
        "commit": provenance.git_commit(REPO),
        "model": "ssdlite_shapes (configs/ssdlite_shapes.py) + SSDLite's full augmentation",
        "overrides": overrides(args, data),
        "recipe": {k: v for k, v in spec.items() if k != "data"},
        "data": dict(
            generator="ssd_jax.data.synthetic",
            seed=0,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=128,
        ),
        "seeds": args.seeds,
        "twin": {},
        "ours": {"ap": [], "ap50": [], "curves": [], "wall_s": []},
        "mmdet": {"ap": [], "ap50": [], "curves": [], "wall_s": []},
    }
    bar = progress(2 * len(args.seeds), desc="runs", unit="run")
    steps_per_epoch = args.num_train // config.train.batch_size
    warm = None
    if args.warm_steps:
        if args.warm_steps % steps_per_epoch:
            print(f"error: --warm-steps must be a multiple of {steps_per_epoch}", file=sys.stderr)
            return 2
        mmdet_init(args, spec_path, 0, work)
        warm_dir = work / "warm_start"
        tqdm.write(f"warm start: {args.warm_steps} steps here from mmdetection's seed-0 init")
        train_ours(
            warm_dir,
            [
                *warm_overrides(args, data, steps_per_epoch),
                f"train.load_from={work / 'init_seed0.pth'}",
            ],
            work / "warm_start.log",
        )
        warm = work / "warm_start.pth"
        checkpoint_to_state_dict(warm_dir, work / "init_seed0.pth", warm)
        start_rows = ours_curves(warm_dir)
        result["start"] = dict(
            kind="warm",
            steps=args.warm_steps,
            overrides=warm_overrides(args, data, steps_per_epoch),
            mAP=start_rows["mAP"][-1],
            mAP_50=start_rows["mAP_50"][-1],
        )
    else:
        result["start"] = dict(kind="mmdetection init_weights, one per seed")
    for seed in args.seeds:
        if warm is None:
            mmdet_init(args, spec_path, seed, work)
            init = work / f"init_seed{seed}.pth"
        else:
            init = warm
            subprocess.run(
                [
                    args.mmdet_python,
                    str(WORKER),
                    "probe",
                    str(spec_path),
                    str(seed),
                    str(init),
                    str(work / f"init_seed{seed}_probe.npz"),
                ],
                check=True,
                cwd=REPO,
                capture_output=True,
            )
        twin = twin_check(config, init, work / f"init_seed{seed}_probe.npz")
        tqdm.write(f"seed {seed}: twin {twin}")
        result["twin"][str(seed)] = twin
        if twin["head_outputs_max_rel"] > 1e-4 or twin["anchors_max_abs_px"] > 1e-3:
            raise SystemExit(f"the mmdetection twin differs from ours: {twin}")

        ours_dir = work / f"ours_seed{seed}"
        start = time.time()
        train_ours(
            ours_dir,
            [*overrides(args, data), f"train.seed={seed}", f"train.load_from={init}"],
            work / f"ours_seed{seed}.log",
        )
        result["ours"]["wall_s"].append(time.time() - start)
        c = ours_curves(ours_dir)
        c["epoch"] = [s // steps_per_epoch for s in c["step"]]
        c["steps_per_epoch"] = steps_per_epoch
        result["ours"]["curves"].append(c)
        result["ours"]["ap"].append(c["mAP"][-1])
        result["ours"]["ap50"].append(c["mAP_50"][-1])
        bar.update(1)

        start = time.time()
        mm_out = work / f"mmdet_seed{seed}.json"
        stream(
            [
                args.mmdet_python,
                str(WORKER),
                "train",
                str(spec_path),
                str(seed),
                str(init),
                str(work / f"mmdet_seed{seed}"),
                str(mm_out),
            ],
            work / f"mmdet_seed{seed}.log",
        )
        result["mmdet"]["wall_s"].append(time.time() - start)
        mm = json.loads(mm_out.read_text())
        result["mmdet"]["versions"] = mm["versions"]
        result["mmdet"]["curves"].append(
            dict(
                epoch=[e["epoch"] for e in mm["epochs"]],
                iter=[e["iter"] for e in mm["epochs"]],
                mAP=[e["mAP"] for e in mm["epochs"]],
                mAP_50=[e["mAP_50"] for e in mm["epochs"]],
                mAP_75=[e["mAP_75"] for e in mm["epochs"]],
                train=mm["train"],
            )
        )
        result["mmdet"]["ap"].append(mm["epochs"][-1]["mAP"])
        result["mmdet"]["ap50"].append(mm["epochs"][-1]["mAP_50"])
        bar.update(1)
        tqdm.write(
            f"seed {seed}: ours AP {result['ours']['ap'][-1]:.4f} / AP50 "
            f"{result['ours']['ap50'][-1]:.4f}; mmdet AP {result['mmdet']['ap'][-1]:.4f} / AP50 "
            f"{result['mmdet']['ap50'][-1]:.4f}"
        )
    bar.close()
    result["claim"] = {
        "rule": "|mean AP ours - mean AP mmdet| <= max(0.01, pooled std)",
        "ap": verdict(result["ours"]["ap"], result["mmdet"]["ap"]),
        "ap50": verdict(result["ours"]["ap50"], result["mmdet"]["ap50"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    v = result["claim"]["ap"]
    print(
        f"AP ours {result['ours']['ap']} mean {v['mean_ours']:.4f}; mmdet {result['mmdet']['ap']} "
        f"mean {v['mean_mmdet']:.4f}; difference {v['difference']:+.4f}, threshold "
        f"{v['threshold']:.4f}: {'holds' if v['holds'] else 'FAILS'}\n"
        f"{out}\n{out.with_suffix('.png')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
