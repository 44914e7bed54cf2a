"""Where a measured figure came from: the CPU model, package versions and the git commit, for
the JSON files that scripts write beside their numbers."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
from importlib import metadata

DEFAULT_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def cpu_model() -> str:
    """``lscpu``'s model name (``platform.processor()`` where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


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
    """The CPU model and core count."""
    return {"cpu": cpu_model(), "cores": os.cpu_count()}
