"""Output files never replace inputs or earlier outputs unless the user says ``--overwrite``.

check_outputs("out/", ["metrics.json"], overwrite=False, inputs=["model.pth"])
check_output_path("ckpt/ssd300", overwrite=False)        # a file or folder to be created
check_workdir("runs/x", resume=False, overwrite=False)   # a training run's folder
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

from ssd_jax.errors import OutputExistsError


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_outputs(
    out_dir: str | os.PathLike,
    names: Sequence[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse (OutputExistsError, one line) to write ``out_dir/<name>`` for any ``name`` that
    exists — an earlier output, or one of ``inputs`` — unless ``overwrite``."""
    if overwrite:
        return
    inputs = [os.fspath(p) for p in inputs]
    for name in names:
        path = os.path.join(os.fspath(out_dir), name)
        if not os.path.lexists(path):
            continue
        if any(_same(path, p) for p in inputs if os.path.exists(p)):
            raise OutputExistsError(
                f"{path} is an input and would be replaced by an output; "
                "choose another --out (or --overwrite)"
            )
        raise OutputExistsError(
            f"{path} exists (an earlier output?); choose another --out or "
            "pass --overwrite to replace it"
        )


def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse (OutputExistsError) to create ``path`` — a file, or a folder that must be new or
    empty — when it already holds something, unless ``overwrite``."""
    path = os.fspath(path)
    if overwrite or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    raise OutputExistsError(
        f"{path} exists and is not empty; choose another output or pass --overwrite to replace it"
    )


def check_workdir(workdir: str | os.PathLike, *, resume: bool, overwrite: bool) -> bool:
    """Whether ``workdir`` holds an earlier run that ``overwrite`` is to move aside.

    A training run starts in a new or empty folder (empty folders inside, as a run that failed
    at its start leaves, count as empty). One that holds any file (an earlier run's
    checkpoints, ``metrics.jsonl``, TensorBoard logs, pictures, evaluations) is refused with
    OutputExistsError unless ``resume`` (continue that run) or ``overwrite`` (start again once
    ``move_aside`` has moved the earlier run away; returns True then).
    """
    workdir = os.fspath(workdir)
    if not os.path.lexists(workdir):
        return False
    if not os.path.isdir(workdir):
        raise OutputExistsError(f"--workdir {workdir} exists and is not a folder")
    if resume or not any(files for _, _, files in os.walk(workdir)):
        return False
    if overwrite:
        return True
    raise OutputExistsError(
        f"{workdir} holds an earlier run ({_listing(workdir)}); pass --resume to continue it, "
        "--overwrite to move it aside and start again, or choose another --workdir"
    )


def move_aside(path: str | os.PathLike) -> str:
    """Rename ``path`` to ``<path>.old-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when taken) in the
    same folder; returns the new name. Nothing is deleted."""
    path = os.path.normpath(os.fspath(path))
    base = f"{path}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = base, 1
    while os.path.lexists(target):
        n += 1
        target = f"{base}-{n}"
    os.rename(path, target)
    return target


def _listing(folder: str, limit: int = 4) -> str:
    """``checkpoints/, metrics.jsonl, ... (7 entries)``: what a folder holds, briefly."""
    names = sorted(
        n + ("/" if os.path.isdir(os.path.join(folder, n)) else "") for n in os.listdir(folder)
    )
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")
