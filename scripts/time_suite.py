"""Time the test suite as CI runs it (``pytest -n 2``) and write the figures as JSON.

    python scripts/time_suite.py --out docs/benchmarks/suite_time_DATE.json [-- PYTEST_ARGS]

Records the wall time of the whole run, its outcome counts, each file's summed test time (from
pytest's JUnit XML: setup, call and teardown of its tests, on whichever worker ran it), the
slowest tests and every test over 1 s, the load average before and after, the CPU model
(``lscpu``) and the versions.
Run it alone: the figure is only meaningful on an otherwise idle machine. As CI starts from a
clean clone, the suite's caches (``.pytest_cache``: JAX's compilation cache of the test
subprocesses, the decompressed fixture checkpoints) are removed first; ``--warm`` keeps them.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]


#: The CPU flags that tell these machines apart (an AMD EPYC with AVX2 only, or with AVX-512;
#: an Intel Xeon with AMX): lscpu's model name alone does not.
SPEED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"}


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def cpu_model() -> str:
    return lscpu().get("Model name") or platform.processor()


def cpu_flags() -> list[str]:
    return sorted(set(lscpu().get("Flags", "").split()) & SPEED_FLAGS)


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "torch", "pytest", "pytest-xdist"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--warm", action="store_true", help="keep .pytest_cache (not as CI)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    if not args.warm:
        shutil.rmtree(REPO / ".pytest_cache", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = pathlib.Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-n", "2", "-q", f"--junitxml={junit}"]
        command += args.pytest_args
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        root = ET.parse(junit).getroot()
    per_file: dict[str, float] = collections.defaultdict(float)
    tests, outcomes = [], collections.Counter()
    for case in root.iter("testcase"):
        seconds = float(case.get("time", 0))
        module = case.get("classname", "").split(".")[-1] + ".py"
        per_file[module] += seconds
        tests.append((seconds, f"{module}::{case.get('name')}"))
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        outcomes[kind] += 1
    report = {
        "script": "scripts/time_suite.py",
        "command": " ".join(["pytest", *command[3:]]).replace(str(junit), "JUNIT"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "versions": versions(),
        "caches": "kept (--warm)" if args.warm else "removed before the run, as in CI",
        "exit_code": proc.returncode,
        "outcomes": dict(outcomes),
        "wall_s": round(wall, 1),
        "per_file_test_s": {
            k: round(v, 1) for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])
        },
        "slowest_tests_s": [[name, round(s, 1)] for s, name in sorted(tests, reverse=True)[:15]],
        "tests_over_1s": {name: round(s, 1) for s, name in sorted(tests, reverse=True) if s >= 1},
    }
    text = json.dumps(report, indent=1)
    pathlib.Path(args.out).write_text(text + "\n")
    print(
        f"suite: {wall / 60:.1f} min wall, exit {proc.returncode}, {dict(outcomes)} -> {args.out}"
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
