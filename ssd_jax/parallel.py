"""Data parallelism over local devices: the pmap axis, replicated state and sharded batches.

state = replicate(state)                  # a copy per local device, leading axis D
batch = shard_batch(batch, num_devices)   # [B, ...] → [D, B/D, ...]
host = unreplicate(state)                 # the first device's copy, on the host
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

# The pmap axis of every data-parallel function (train step, sharded inference).
AXIS = "batch"


def replicate(tree: Any) -> Any:
    """Copies on every local device, with a leading device axis (pmap's replicated layout).
    A tree without arrays (an exported model's empty variables) is returned as it is."""
    if not jax.tree.leaves(tree):
        return tree
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), tree)
    return jax.pmap(lambda x: x, axis_name=AXIS)(stacked)  # laid out as the steps return it


def unreplicate(tree: Any) -> Any:
    """The first device's copy, on the host."""
    return jax.tree.map(_first_copy, tree)


def _first_copy(x: Any) -> np.ndarray:
    # The first local device's buffer itself: ``x[0]`` would compile a slicing program per
    # leaf shape (hundreds, 1-2 s at a run's first checkpoint), and ``np.asarray(x)`` would
    # bring every device's copy to the host.
    if isinstance(x, jax.Array) and not x.is_fully_replicated:
        shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.asarray(shard.data)[0]
    return np.asarray(x)[0]


def shard_batch(batch: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """[B, ...] host arrays → [D, B/D, ...] for pmap."""

    def split(x):
        if x.shape[0] % num_devices:
            raise ValueError(
                f"per-process batch {x.shape[0]} is not divisible by the "
                f"{num_devices} local devices"
            )
        return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

    return jax.tree.map(split, batch)


def maybe_initialize_distributed(
    coordinator: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """``jax.distributed.initialize`` when launched as several processes.

    Explicit arguments (a coordinator address), or what JAX detects itself: SLURM, TPU pods,
    Open MPI. Single-process runs are left alone.
    """
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif (
        any(
            k in os.environ
            for k in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")
        )
        and int(os.environ.get("SLURM_NTASKS", "2")) > 1
    ):
        jax.distributed.initialize()
