"""Speed of two revisions, side by side: run before landing a change to ssd_jax/models,
training, data or the post-processing.

    python scripts/compare_speed.py BASE [HEAD] [--configs ssd300_coco,ssdlite_mobilenetv2_320_coco]
        [--batch 8] [--rounds 6] [--out docs/benchmarks/compare_speed_DATE.json]
    python scripts/compare_speed.py --against-mmdet MMDET_PYTHON [REV]   # mmdetection as BASE

BASE and HEAD are git revisions (HEAD by default; ``.`` is the working tree as it is, uncommitted
changes included). Each revision is checked out into a temporary worktree. For every config,
one worker process per revision builds the model from its own tree and compiles the train step
(random weights and images, 8 boxes per image), the network's forward pass ("inference") and
detection with decoding and NMS ("detect"); then ``--rounds`` rounds time each of them in both
workers, alternating which revision goes first, so that both see the same machine load. The
ratio is HEAD / BASE of the median images/s over rounds.

Each timing follows ``--warmup`` untimed calls (1 by default; their images/s are kept in the
JSON), so that what is timed is calls run back to back, as a training loop runs its steps. A
worker idles while the other side runs, and on the virtual machines this project is built on
the guest kernel hands freed memory back to the host in the meantime (virtio-balloon free page
reporting; ``machine.free_page_reporting`` in the JSON): the first call after an idle spell
faults it in again from the host. XLA frees its per-call block after every call and PyTorch
keeps most of its memory in malloc's heap, so this hit the two sides unequally: SSDLite's train
step at batch 8 (AMD EPYC, both on huge pages) ran at 0.55 of its back-to-back speed after 8 s
idle, mmdetection's at 0.68 (scripts/idle_penalty.py; docs/benchmarks/idle_penalty_2026-12-07.json).

Exit status 1 when any ratio is below ``1 - --threshold`` (a slow-down of more than 10 % by
default) or a worker's peak host memory (RSS) grew by more than that, 0 otherwise. These
machines are noisy: rerun a failing comparison before believing it, and never put this in the
timed test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

KINDS = ("train", "inference", "detect")
DEFAULT_CONFIGS = "ssd300_coco,ssdlite_mobilenetv2_320_coco"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", nargs="?", help="the revision to compare against (e.g. main)")
    parser.add_argument(
        "head",
        nargs="?",
        default="HEAD",
        help="the revision under test ('.': the working tree, uncommitted changes included)",
    )
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="bundled config names")
    parser.add_argument("--batch", type=int, default=8, help="global batch (images)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--kinds", default=",".join(KINDS), help="train, inference, detect")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per config")
    parser.add_argument("--iters", type=int, default=2, help="calls per timing")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls before each timing (see above)"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.10, help="largest slow-down accepted (fraction)"
    )
    parser.add_argument("--out", default="", help="also write the JSON report here")
    parser.add_argument(
        "--against-mmdet",
        metavar="PYTHON",
        default="",
        help="compare one revision (the first positional argument, default HEAD) with "
        "mmdetection 3.3.0 run by this python (../shared/mmdet_reference's environment), "
        "which then plays BASE",
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config, batch, precision, kinds = args.worker
        return _worker(config, int(batch), precision, kinds.split(","))
    if not args.base and not args.against_mmdet:
        parser.error("name the BASE revision")
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS) or min(args.rounds, args.iters, args.batch) < 1 or args.warmup < 0:
        parser.error(
            f"--kinds from {', '.join(KINDS)}; --rounds, --iters, --batch at least 1, "
            "--warmup at least 0"
        )
    if args.out and os.path.exists(args.out):
        parser.error(f"{args.out} exists; choose another --out")
    repo = _git("rev-parse", "--show-toplevel", cwd=os.getcwd())
    if args.against_mmdet:
        revisions = {"head": args.base or "HEAD"}
        sides = {"base": {"rev": "mmdetection 3.3.0", "python": args.against_mmdet}}
    else:
        revisions, sides = {"base": args.base, "head": args.head}, {}
    for label, rev in revisions.items():
        if rev == ".":
            sides[label] = {"rev": ".", "commit": _git("rev-parse", "HEAD", cwd=repo) + "+dirty"}
            continue
        try:
            commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=repo)
        except subprocess.CalledProcessError:
            parser.error(f"{rev!r} is not a revision of {repo}")
        sides[label] = {"rev": rev, "commit": commit}
    with tempfile.TemporaryDirectory(prefix="compare_speed_") as tmp:
        trees: dict[str, str] = {}
        try:
            commands = {}
            for label in ("base", "head"):
                side = sides[label]
                if "python" in side:
                    script = os.path.join(repo, "scripts", "mmdet_speed_worker.py")
                    commands[label] = ([side["python"], script], repo, {})
                    continue
                trees[label] = repo
                if side["rev"] != ".":
                    trees[label] = os.path.join(tmp, label)
                    _git("worktree", "add", "--detach", trees[label], side["commit"], cwd=repo)
                script = os.path.abspath(__file__)
                cmd = [sys.executable, script, "--worker"]
                commands[label] = (cmd, trees[label], {"PYTHONPATH": trees[label]})
            results = {
                name: _compare_config(name, commands, args, kinds, tmp)
                for name in args.configs.split(",")
                if name
            }
        finally:
            for tree in trees.values():
                if tree != repo:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", tree],
                        cwd=repo,
                        capture_output=True,
                    )
    slow = [
        f"{c} {k}"
        for c, r in results.items()
        for k, v in r.items()
        if k in KINDS and v["ratio"] < 1 - args.threshold
    ]
    slow += [  # memory growth between revisions (against mmdetection it is only reported)
        f"{c} peak host memory"
        for c, r in results.items()
        if not args.against_mmdet
        and r["peak_host_memory_mb"]["head"]
        > (1 + args.threshold) * r["peak_host_memory_mb"]["base"]
    ]
    report = {
        **report_header("scripts/compare_speed.py", argv),
        "base": sides["base"],
        "head": sides["head"],
        "batch": args.batch,
        "precision": args.precision,
        "rounds": args.rounds,
        "iters": args.iters,
        "warmup": args.warmup,
        "threshold": args.threshold,
        "results": results,
        "slower": slow,
    }
    _print_table(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    if slow:
        print(
            f"SLOWER than {sides['base']['rev']} by more than {args.threshold:.0%}: "
            f"{', '.join(slow)}"
        )
        return 1
    return 0


def _compare_config(
    name: str,
    commands: dict[str, tuple[list[str], str, dict[str, str]]],
    args: Any,
    kinds: list[str],
    tmp: str,
) -> dict[str, Any]:
    """Per kind: images/s of every round on both sides, their medians and HEAD/BASE; the peak
    host memory of each side's process."""
    from tqdm import tqdm

    workers: dict[str, Worker] = {}
    try:
        for label, (cmd, cwd, env) in commands.items():  # one at a time: compiles share cores
            print(f"{name}: compiling {label} ({cwd})", file=sys.stderr, flush=True)
            workers[label] = Worker(
                cmd + [name, str(args.batch), args.precision, ",".join(kinds)],
                cwd,
                env,
                os.path.join(tmp, f"{label}_{name}.log"),
            )
        sides = ("base", "head")
        rates = {k: {s: [] for s in sides} for k in kinds}
        cpu = {k: {s: [] for s in sides} for k in kinds}  # CPU seconds per call
        warm = {k: {s: [] for s in sides} for k in kinds}  # images/s of the untimed calls
        bar = tqdm(
            total=args.rounds * len(kinds) * 2,
            desc=f"{name} rounds",
            unit="timing",
            file=sys.stderr,
        )
        with bar:
            for r in range(args.rounds):
                for kind in kinds:
                    for side in sides if r % 2 == 0 else sides[::-1]:
                        if args.warmup:
                            seconds, _ = workers[side].time(kind, args.warmup)
                            warm[kind][side].append(args.batch * args.warmup / seconds)
                        seconds, cpu_seconds = workers[side].time(kind, args.iters)
                        rates[kind][side].append(args.batch * args.iters / seconds)
                        cpu[kind][side].append(cpu_seconds / args.iters)
                        bar.update()
        out: dict[str, Any] = {}
        for kind in kinds:
            med = {s: float(statistics.median(rates[kind][s])) for s in sides}
            out[kind] = {
                "base_images_per_s": rates[kind]["base"],
                "head_images_per_s": rates[kind]["head"],
                "base_median": med["base"],
                "head_median": med["head"],
                "ratio": med["head"] / med["base"],
                # less sensitive to other processes than wall time; spinning threads count too
                "cpu_s_per_call_median": {s: statistics.median(cpu[kind][s]) for s in sides},
                "compile_s": {s: workers[s].ready["compile_s"].get(kind) for s in sides},
                "warmup_images_per_s": warm[kind],  # the first calls of each round, untimed
            }
            if kind == "train":
                out[kind]["per_gpu_batch"] = {
                    s: workers[s].ready.get("per_gpu_batch") for s in sides
                }
        out["peak_host_memory_mb"] = {s: workers[s].peak_rss_mb for s in sides}
        return out
    finally:
        for w in workers.values():
            w.close()


class Worker:
    """A process that times one config's functions on request: it prints a JSON line when
    compiled (``ready``), then answers each ``time(kind, iters)`` with the seconds taken."""

    def __init__(self, cmd: list[str], cwd: str, env: dict[str, str], log: str):
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),
            text=True,
        )
        self.ready = self._read()
        self.peak_rss_mb = self.ready["peak_rss_mb"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            with open(self.log) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"worker {' '.join(self.proc.args)} died:\n{tail}")
        return json.loads(line)

    def time(self, kind: str, iters: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of all the worker's threads) for ``iters`` calls."""
        self.proc.stdin.write(json.dumps({"kind": kind, "iters": iters}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        self.peak_rss_mb = reply["peak_rss_mb"]
        return reply["seconds"], reply["cpu_seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _worker(config_name: str, batch: int, precision: str, kinds: list[str]) -> int:
    """Runs inside a revision's tree: compile, say ready, then time on request (JSON lines)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ssd_jax import Detector
    from ssd_jax.config import load_config

    config = load_config(os.path.join("configs", f"{config_name}.py"), [])
    config.precision = precision
    det = Detector(config)
    n, s = batch, config.input_size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, s, s, 3)).astype(np.float32))
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    scales = np.ones((n, 2), np.float32)
    fns, ready = {}, {"compile_s": {}}
    if "inference" in kinds:
        fns["inference"] = lambda: det.forward(x)
    if "detect" in kinds:
        import inspect

        takes_uint8 = "images" in inspect.signature(det.detect_batch).parameters
        fns["detect"] = lambda: det.detect_batch(images if takes_uint8 else x, scales)
    if "train" in kinds:
        fns["train"], ready["per_gpu_batch"] = _train_step(config, det, n, rng)
    for kind, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ready["compile_s"][kind] = time.perf_counter() - t0
        jax.block_until_ready(fn())  # a second warm-up call
    ready["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        fn = fns[request["kind"]]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(request["iters"]):
            out = fn()
        jax.block_until_ready(out)
        reply = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        print(json.dumps(reply | {"peak_rss_mb": _peak_rss_mb()}), flush=True)
    return 0


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_step(config: Any, det: Any, n: int, rng: Any) -> tuple[Any, Any]:
    """A callable running one train step of ``config`` on a fixed batch, and the per-GPU
    BatchNorm/loss group it used (None for revisions before per-GPU groups)."""
    import inspect

    import jax
    import numpy as np

    from ssd_jax.training import optim
    from ssd_jax.training import step as step_module
    from ssd_jax.training.state import create_train_state

    try:
        from ssd_jax.parallel import replicate, shard_batch
    except ImportError:  # revisions before 1161366
        replicate, shard_batch = step_module.replicate, step_module.shard_batch
    devices = jax.local_device_count()
    s, m = config.input_size, 8
    xy = rng.uniform(0, s * 0.7, (n, m, 2))
    wh = rng.uniform(s * 0.05, s * 0.3, (n, m, 2))
    batch = shard_batch(
        {
            "image": rng.integers(0, 255, (n, s, s, 3), dtype=np.uint8),
            "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
            "labels": rng.integers(0, config.model.num_classes, (n, m)).astype(np.int32),
            "valid": np.ones((n, m), bool),
        },
        devices,
    )
    tx = optim.sgd(config, optim.lr_schedule(config, n, 1000))
    state = {"state": replicate(create_train_state(det.variables, tx, 0))}
    per_gpu = None
    if "model" in inspect.signature(step_module.make_p_train_step).parameters:
        # revisions before 1161366: SyncBN over the whole batch
        from ssd_jax.models import build_model

        num_anchors = [len(a) // (h * w) for a, (h, w) in zip(det.anchors(), det.featmap_sizes)]
        model = build_model(
            config.model,
            num_anchors,
            bn_axis_name="batch" if config.model.neck.norm else None,
            precision=config.precision,
        )
        p_step = step_module.make_p_train_step(model, tx, det.flat_anchors, config)
    else:
        from ssd_jax import objective

        per_gpu = int(config.train.get("per_gpu_batch", 0))
        if hasattr(objective, "fitting_per_gpu_batch"):
            per_gpu = objective.fitting_per_gpu_batch(per_gpu, n, devices)
        elif per_gpu and (n // devices) % per_gpu:
            per_gpu = n // devices  # revisions before fitting_per_gpu_batch: one group
        config.train.per_gpu_batch = per_gpu
        p_step = step_module.make_p_train_step(config, tx, det.flat_anchors, n)

    def step():
        state["state"], metrics = p_step(state["state"], batch)
        return metrics

    return step, per_gpu


def report_header(script: str, argv: list[str] | None) -> dict[str, Any]:
    """The fields every speed report starts with: script, arguments, date, machine, versions."""
    return {
        "script": script,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(),
        "versions": versions(),
    }


def machine_description() -> dict[str, Any]:
    """lscpu's model name, the core count, the speed-relevant flags and the load now."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "platform": platform.platform(),
        # a guest kernel that hands freed memory back to its host (see the module docstring)
        "free_page_reporting": os.path.isdir("/sys/module/page_reporting"),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["lscpu_model"] = value.strip()
        if key.strip() == "Flags":
            wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"}
            info["flags"] = sorted(set(value.split()) & wanted)
    return info


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _print_table(report: dict) -> None:
    m, base, head = report["machine"], report["base"], report["head"]
    print(
        f"\n{base['rev']} {base.get('commit', '')[:10]} → {head['rev']} "
        f"{head.get('commit', '')[:10]}, batch {report['batch']}, {report['precision']}, "
        f"{m.get('lscpu_model', '?')}, {m['cores']} cores, {report['date']}"
    )
    print(
        f"{'config':30} {'kind':10} {'base img/s':>11} {'head img/s':>11} {'head/base':>10} "
        f"{'by CPU time':>12}"
    )
    for config, kinds in report["results"].items():
        for kind, r in kinds.items():
            if kind in KINDS:
                cpu = r["cpu_s_per_call_median"]
                print(
                    f"{config:30} {kind:10} {r['base_median']:11.2f} "
                    f"{r['head_median']:11.2f} {r['ratio']:9.2f}× "
                    f"{cpu['base'] / cpu['head']:11.2f}×"
                )
        mem = kinds["peak_host_memory_mb"]
        print(
            f"{config:30} {'peak MB':10} {mem['base']:11.0f} {mem['head']:11.0f} "
            f"{mem['head'] / mem['base']:9.2f}×"
        )


def _git(*args: str, cwd: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
