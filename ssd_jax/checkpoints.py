"""Orbax checkpoints of model variables, and the restore rules shared with training's.

Layout: an orbax ``CheckpointManager`` directory; each step holds the items ``variables``
(``{'params', 'batch_stats'}``), ``meta`` (JSON: config name, class names, step) and, when
written by training, ``train_state``. ``python -m ssd_jax.porting`` writes step 0 with
``variables`` and ``meta`` only.

Restoring the latest step: a step whose files are cut, missing or corrupt is skipped, with a
warning, for the one before it (a save killed mid-write); a step whose saved tree does not fit
what is being restored (the config changed) is refused with CheckpointTreeMismatchError naming
the differences — never silently replaced by an older step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from ssd_jax.errors import InputFileError, UserError

log = logging.getLogger(__name__)

# What a step whose files are cut, missing or corrupt raises while restoring (orbax, tensorstore
# and json errors), as opposed to bugs, which propagate.
RESTORE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError)

T = TypeVar("T")


class CheckpointTreeMismatchError(UserError, ValueError):
    """A saved step's tree does not fit the one being restored (another config); the first line
    summarises, the next lines list the differing entries."""


class CheckpointRestoreError(UserError, RuntimeError):
    """No step (or not the step asked for) could be restored; the message lists why."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit] if text else ''}"


def saved_shapes(manager: ocp.CheckpointManager, step: int, item: str) -> dict[str, tuple]:
    """``{'a/b/c': shape}`` of a saved item's arrays, from its metadata (no array is read).
    Raises ValueError (an unreadable step) when the metadata cannot be read."""
    metadata = manager.item_metadata(step)[item]
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
        raise ValueError(f"no readable metadata for item {item!r} of step {step}")
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in leaves
    }


def template_shapes(tree: Any) -> dict[str, tuple]:
    """``{'a/b/c': shape}`` of a template tree (nested dicts of arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(
            str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path
        ): tuple(np.shape(leaf))
        for path, leaf in leaves
    }


def check_tree(saved: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    """Raise CheckpointTreeMismatchError when the saved entries and shapes differ."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shaped = sorted(
        f"{k}: saved {saved[k]} vs expected {expected[k]}"
        for k in set(saved) & set(expected)
        if saved[k] != expected[k]
    )
    if not (missing or unexpected or shaped):
        return
    counts = ", ".join(
        f"{len(v)} {name}"
        for name, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
        if v
    )
    lines = [
        f"{where} was saved for another model or config ({counts} entries); restore it with "
        "the config it was trained with, or start a new workdir"
    ]
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            lines.append(f"  {name} ({len(keys)}): " + "\n      ".join(keys[:30]))
    raise CheckpointTreeMismatchError("\n".join(lines))


def restore_newest(
    steps: list[int], restore_one: Callable[[int], T], directory: str
) -> tuple[int, T, list[int]]:
    """``restore_one(step)`` for the newest step that restores; returns (step, result, newer
    unreadable steps). A step raising one of RESTORE_ERRORS is skipped (logged); a tree
    mismatch propagates at once. Raises CheckpointRestoreError when no step restores."""
    if not steps:
        raise InputFileError(f"no complete checkpoint step in {directory}")
    failures, unreadable = [], []
    for step in sorted(steps, reverse=True):
        try:
            result = restore_one(step)
        except CheckpointTreeMismatchError:
            raise
        except RESTORE_ERRORS as e:
            unreadable.append(step)
            failures.append(f"step {step}: {first_line(e)}")
            log.warning(
                "cannot restore checkpoint step %d from %s (%s); trying the previous step",
                step,
                directory,
                first_line(e),
            )
            continue
        if unreadable:
            log.warning(
                "restored step %d of %s; newer step(s) %s are unreadable",
                step,
                directory,
                unreadable,
            )
        return step, result, unreadable
    raise CheckpointRestoreError(
        f"no checkpoint step in {directory} could be restored:\n  " + "\n  ".join(failures)
    )


def save_variables(directory: str | os.PathLike, variables: dict, meta: dict, step: int = 0) -> str:
    """Write ``variables`` and ``meta`` as step ``step`` of an orbax manager in ``directory``."""
    directory = os.path.abspath(os.fspath(directory))
    with ocp.CheckpointManager(directory) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(jax.tree.map(np.asarray, variables)),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        mngr.wait_until_finished()
    return directory


def load_variables(
    directory: str | os.PathLike, step: int | None = None
) -> tuple[dict[tuple[str, ...], np.ndarray], dict[str, Any]]:
    """Flat ``{(collection, *path): array}`` and meta of the latest (or given) complete step.

    ``directory`` is an orbax manager directory, or a training workdir (its ``checkpoints``).
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.isdir(os.path.join(directory, "checkpoints")):  # a training workdir
        directory = os.path.join(directory, "checkpoints")
    with ocp.CheckpointManager(directory) as mngr:

        def restore(candidate: int) -> dict:
            return mngr.restore(
                candidate,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                ),
            )

        steps = mngr.all_steps() if step is None else [step]
        _, restored, _ = restore_newest(list(steps), restore, directory)
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(restored["variables"])))
    return flat, dict(restored["meta"] or {})
