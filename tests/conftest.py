"""Shared test setup: fixture discovery and Detectors built once per session."""

from __future__ import annotations

import contextlib
import importlib
import json
import lzma
import os
import pathlib
from types import ModuleType

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("SSD_JAX_FIXTURES", REPO.parent / "shared" / "fixtures"))
# .ci/run sets this so that absent fixtures fail the run instead of skipping.
REQUIRE_FIXTURES = os.environ.get("SSD_JAX_REQUIRE_FIXTURES", "") not in ("", "0")

FIXTURE_CONFIGS = {
    "ssd300_coco": REPO / "configs" / "ssd300_coco.py",
    "ssdlite_mobilenetv2_320_coco": REPO / "configs" / "ssdlite_mobilenetv2_320_coco.py",
}


def fixture_dir(name: str) -> pathlib.Path:
    path = FIXTURES / name
    if not (path / "reference.npz").is_file():
        msg = f"mmdetection reference fixtures not found at {path} (set SSD_JAX_FIXTURES)"
        if REQUIRE_FIXTURES:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


#: Decompressed fixture checkpoints, shared by every test process (xdist workers, subprocesses).
CHECKPOINT_CACHE = REPO / ".pytest_cache" / "fixture_checkpoints"


@contextlib.contextmanager
def _exclusive(lock: pathlib.Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, at worst decompressed twice
        yield
        return
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def checkpoint_file(name: str) -> pathlib.Path:
    """The fixture's ``checkpoint.pth.xz`` as a plain ``.pth``, decompressed once per version.

    lzma takes 2-4 s for SSD300's 36 MB on the 2-core machine, and half a dozen test files (and
    the training subprocesses) read it; the copy under ``.pytest_cache`` is keyed by the .xz's
    size and mtime and written atomically under a lock, so concurrent xdist workers decompress
    it once. Reading ``.xz`` itself stays tested in test_pth_reader.py on both fixtures.
    """
    xz = fixture_dir(name) / "checkpoint.pth.xz"
    stat = xz.stat()
    path = CHECKPOINT_CACHE / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.pth"
    if path.is_file():
        return path
    CHECKPOINT_CACHE.mkdir(parents=True, exist_ok=True)
    with _exclusive(CHECKPOINT_CACHE / f"{name}.lock"):
        if not path.is_file():  # another process may have written it while this one waited
            for stale in CHECKPOINT_CACHE.glob(f"{name}-*.pth"):
                stale.unlink()
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(lzma.decompress(xz.read_bytes()))
            os.replace(tmp, path)
    return path


#: Compiled programs shared by the suite's subprocesses (JAX's persistent cache): the training
#: runs of several files compile the same 32 px steps.
JAX_CACHE = REPO / ".pytest_cache" / "jax_cache"

#: XLA's LLVM backend at -O0, for the suite's processes, which compile much and run little: on
#: 2 cores the float64 per-GPU check spends 255 s compiling at the default level and 75 s at 0,
#: while its programs run for seconds; the in-process parity, export, eval and predict files
#: spent 314 s compiling at the default level and 145 s at 0 (2026-12-06, AMD EPYC with AVX2).
#: The HLO, and with it every result, is the same program; rounding may differ in the last bits
#: (1e-17 in the float64 check; every parity tolerance holds at both levels). Runs of many steps
#: of a real-size model keep the default (-O0 halves the 128 px SSDLite's train step rate): the
#: default run (test_default_run.py), which is also what users run.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"

# The test processes themselves (xdist workers): set before JAX creates its CPU client, which
# reads XLA_FLAGS once. An optimisation level set by whoever runs the suite is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()


def subprocess_env(xla_flags: str = "", fast_compile: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a tool or script run as a subprocess by a test: this checkout on
    ``PYTHONPATH``, unbuffered output, the shared compilation cache, ``xla_flags`` plus (with
    ``fast_compile``) ``FAST_COMPILE_FLAGS`` (the worker's own XLA_FLAGS are not inherited), and
    ``extra``."""
    xla_flags = f"{xla_flags} {extra.pop('XLA_FLAGS', '')}"
    if fast_compile:
        xla_flags += f" {FAST_COMPILE_FLAGS}"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        XLA_FLAGS=" ".join(xla_flags.split()),
    )
    env.update(extra)
    return env


def require(module: str) -> ModuleType:
    """Import a package a test needs (torch, tensorflow_datasets): in a user's clone a missing
    one skips with a reason; under SSD_JAX_REQUIRE_FIXTURES (CI) it fails."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        msg = f"{module} is not installed ({e}): pip install -r requirements-test.txt"
        if REQUIRE_FIXTURES:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg, allow_module_level=True)


@pytest.fixture(scope="session", params=list(FIXTURE_CONFIGS))
def fixture_name(request) -> str:
    return request.param


_CACHE: dict = {}


def load_reference(name: str) -> dict[str, np.ndarray]:
    key = ("ref", name)
    if key not in _CACHE:
        with np.load(fixture_dir(name) / "reference.npz") as z:
            _CACHE[key] = {k: z[k] for k in z.files}
    return _CACHE[key]


def load_detector(name: str, precision: str = "fp32"):
    """The fixture's checkpoint imported through the public API (cached per session).

    ``precision='fp64'`` needs 64-bit JAX: build and call it inside ``jax.enable_x64(True)``.
    """
    key = ("det", name, precision)
    if key not in _CACHE:
        from ssd_jax import Detector

        _CACHE[key] = Detector.from_checkpoint(
            FIXTURE_CONFIGS[name],
            checkpoint_file(name),
            overrides=[f"precision={precision!r}"],
        )
    return _CACHE[key]


def load_meta(name: str) -> dict:
    import json

    return json.loads((fixture_dir(name) / "meta.json").read_text())


def load_state_dict(name: str) -> dict[str, np.ndarray]:
    """The fixture checkpoint's state_dict (mmdetection key names, PyTorch layouts)."""
    key = ("sd", name)
    if key not in _CACHE:
        from ssd_jax.porting import read_state_dict

        _CACHE[key] = read_state_dict(checkpoint_file(name))[0]
    return _CACHE[key]


@pytest.fixture(scope="session")
def reference(fixture_name):
    return load_reference(fixture_name)


@pytest.fixture(scope="session")
def detector(fixture_name):
    return load_detector(fixture_name)


def file_times() -> dict[str, float]:
    """Each test file's summed test time (s) in the newest committed suite timing
    (docs/benchmarks/suite_time_*.json, written by scripts/time_suite.py); {} without one."""
    timings = sorted((REPO / "docs" / "benchmarks").glob("suite_time_*.json"))
    if not timings:
        return {}
    return json.loads(timings[-1].read_text()).get("per_file_test_s", {})


def pytest_collection_modifyitems(config, items):
    """Longest files first. Under ``pytest -n 2`` with ``--dist loadfile`` a file runs on one
    worker and the next file goes to whichever worker is free, so longest-first (LPT) ends both
    workers together; a training file started last would leave the other worker idle for its
    minutes. Files not timed yet go last, in collection order."""
    times = file_times()
    items.sort(key=lambda item: -times.get(item.path.name, 0.0))  # stable: ties in order
