"""Output files never replace inputs or earlier outputs unless the user says ``--overwrite``.

check_outputs("out/", ["metrics.json"], overwrite=False, inputs=["model.pth"])
check_output_path("ckpt/ssd300", overwrite=False)        # a file or folder to be created
"""

from __future__ import annotations

import os
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
