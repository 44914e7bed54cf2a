"""Orbax checkpoints of model variables (and, for training, the rest of the train state).

Layout: an orbax ``CheckpointManager`` directory; each step holds the items ``variables``
(``{'params', 'batch_stats'}``), ``meta`` (JSON: config name, class names, step) and, when
written by training, ``train_state``. ``python -m ssd_jax.porting`` writes step 0 with
``variables`` and ``meta`` only.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

log = logging.getLogger(__name__)


def save_variables(directory: str | os.PathLike, variables: dict, meta: dict, step: int = 0) -> str:
    """Write ``variables`` and ``meta`` as step ``step`` of an orbax manager in ``directory``."""
    directory = os.path.abspath(os.fspath(directory))
    with ocp.CheckpointManager(directory) as mngr:
        mngr.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(jax.tree.map(np.asarray, variables)),
            meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()
    return directory


def load_variables(directory: str | os.PathLike, step: Optional[int] = None
                   ) -> tuple[dict[tuple[str, ...], np.ndarray], dict[str, Any]]:
    """Flat ``{(collection, *path): array}`` and meta of the latest (or given) complete step.

    ``directory`` is an orbax manager directory, or a training workdir (its ``checkpoints``).
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.isdir(os.path.join(directory, "checkpoints")):  # a training workdir
        directory = os.path.join(directory, "checkpoints")
    with ocp.CheckpointManager(directory) as mngr:
        steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no complete orbax checkpoint step in {directory}")
        failures = []
        for candidate in steps:
            try:
                restored = mngr.restore(candidate, args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
                break
            except (OSError, ValueError, KeyError, TypeError) as e:
                where = os.path.join(directory, str(candidate))
                failures.append(f"{where}: {type(e).__name__}: {e}")
                log.warning("cannot read checkpoint %s (%s: %s)%s", where, type(e).__name__, e,
                            "; trying the previous step" if candidate != steps[-1] else "")
        else:
            raise ValueError("no readable checkpoint step:\n  " + "\n  ".join(failures))
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(restored["variables"])))
    return flat, dict(restored["meta"] or {})
