"""Where a measured figure came from: the CPU model, package versions and the git commit, for
the JSON files that scripts write beside their numbers."""

from __future__ import annotations

import functools
import os
import pathlib
import platform
import subprocess
from importlib import metadata

DEFAULT_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


#: The CPU flags that tell these machines apart, in speed and in float32 results (an AMD EPYC
#: with AVX2 only or with AVX-512, an Intel Xeon with AMX): lscpu's model name alone does not.
SPEED_FLAGS = frozenset(
    {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
)


@functools.cache
def _lscpu() -> dict[str, str]:
    """``lscpu``'s fields ({} where it is missing); run once per process."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def cpu_model() -> str:
    """``lscpu``'s model name (``platform.processor()`` where lscpu is missing)."""
    return _lscpu().get("Model name") or platform.processor()


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS the CPU has, sorted ([] where neither lscpu nor /proc/cpuinfo
    says)."""
    flags = _lscpu().get("Flags", "")
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((ln.split(":", 1)[1] for ln in f if ln.startswith("flags")), "")
        except OSError:
            flags = ""
    return sorted(set(flags.split()) & SPEED_FLAGS)


def versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Python's version and each installed package's (None where it is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_commit(repo: str | os.PathLike) -> str | None:
    """The checked-out commit of ``repo``, with ``+dirty`` when tracked files are modified."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=pathlib.Path(repo),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=pathlib.Path(repo),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict:
    """The CPU model, its speed flags (SPEED_FLAGS) and core count."""
    return {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count()}
