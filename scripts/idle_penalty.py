"""What an idle spell costs a worker's next call: the train step (or another kind) of one config,
timed call by call back to back and then after ``--idle`` seconds of sleep before each call, in
``compare_speed``'s workers, for this tree and (``--against-mmdet PYTHON``) mmdetection 3.3.0.

    python scripts/idle_penalty.py [--config ssdlite_mobilenetv2_320_coco] [--kind train]
        [--batch 8] [--calls 5] [--idle 8] [--against-mmdet MMDET_PYTHON] [--out FILE.json]

Also records how much memory the guest kernel reported to its host as free during each idle
spell (``/sys/module/page_reporting/parameters/reported_kib``, virtio-balloon free page
reporting), where the kernel has it. The workers inherit the environment: set
``GLIBC_TUNABLES`` to compare malloc settings (``compare_speed``'s workers do not restart on huge
pages by themselves). Why this matters: ``compare_speed.py``'s docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_speed import Worker, report_header  # noqa: E402

from ssd_jax.host_memory import USER_SETTINGS  # noqa: E402

REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def _reported_mib() -> float | None:
    try:
        with open(REPORTED) as f:
            return int(f.read()) / 1024
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="ssdlite_mobilenetv2_320_coco")
    parser.add_argument("--kind", default="train", choices=("train", "inference", "detect"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=5, help="timed calls in each pattern")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds of sleep before a call")
    parser.add_argument("--against-mmdet", metavar="PYTHON", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out):
        parser.error(f"{args.out} exists; choose another --out")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commands = {
        "ssd_jax": (
            [sys.executable, os.path.join(repo, "scripts", "compare_speed.py"), "--worker"],
            {"PYTHONPATH": repo},
        )
    }
    if args.against_mmdet:
        script = os.path.join(repo, "scripts", "mmdet_speed_worker.py")
        commands["mmdetection"] = ([args.against_mmdet, script], {})
    results = {}
    with tempfile.TemporaryDirectory(prefix="idle_penalty_") as tmp:
        for side, (cmd, env) in commands.items():  # one side at a time: nothing else runs
            print(f"{side}: compiling", file=sys.stderr, flush=True)
            worker = Worker(
                cmd + [args.config, str(args.batch), "fp32", args.kind],
                repo,
                env,
                os.path.join(tmp, f"{side}.log"),
            )
            try:
                worker.time(args.kind, 1)  # one more warm-up call
                back_to_back = [
                    args.batch / worker.time(args.kind, 1)[0] for _ in range(args.calls)
                ]
                after_idle, reported = [], []
                for _ in range(args.calls):
                    before = _reported_mib()
                    time.sleep(args.idle)
                    after = _reported_mib()
                    reported.append(None if before is None else after - before)
                    after_idle.append(args.batch / worker.time(args.kind, 1)[0])
            finally:
                worker.close()
            results[side] = {
                "back_to_back_images_per_s": back_to_back,
                "after_idle_images_per_s": after_idle,
                "reported_free_mib_while_idle": reported,
                "median_ratio_after_idle": statistics.median(after_idle)
                / statistics.median(back_to_back),
                "peak_host_memory_mb": worker.peak_rss_mb,
            }
            print(side, json.dumps(results[side]), flush=True)
    report = {
        **report_header("scripts/idle_penalty.py", argv),
        "malloc_environment": {k: os.environ[k] for k in USER_SETTINGS if k in os.environ},
        "config": args.config,
        "kind": args.kind,
        "batch": args.batch,
        "idle_s": args.idle,
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
