"""Orbax checkpoints of training: the last K steps plus the best by validation mAP.

``workdir/checkpoints`` keeps the latest ``keep`` steps (saved every N steps and at each epoch
end); ``workdir/best`` keeps the one step with the highest validation mAP. Each step has the
items ``variables`` (params, batch_stats — what ``Detector.from_checkpoint`` reads),
``train_state`` (optimizer state, step, RNG, counters) and ``meta`` (JSON: data-loader position,
epoch, config name, class names, metrics). Orbax writes a step to a temporary directory and
renames it when complete, so a run killed mid-save resumes from the previous complete step.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssd_jax.training.state import TrainState


def _manager(directory: str, keep: int, best: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        best_fn=(lambda m: m["score"]) if best else None, best_mode="max",
        keep_checkpoints_without_metrics=not best)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _train_items(state: TrainState) -> dict[str, Any]:
    host = jax.tree.map(np.asarray, state)
    return {"variables": {"params": host.params, "batch_stats": host.batch_stats},
            "train_state": {"step": host.step, "opt_state": host.opt_state, "rng": host.rng,
                            "nonfinite_in_row": host.nonfinite_in_row,
                            "nonfinite_total": host.nonfinite_total}}


class TrainCheckpointer:
    """Saves and restores (TrainState, meta) under a workdir."""

    def __init__(self, workdir: str, keep: int = 3):
        self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
        self.best = _manager(os.path.join(workdir, "best"), 1, best=True)

    def save(self, step: int, state: TrainState, meta: dict, metrics: Optional[dict] = None) -> None:
        """Save ``state`` (unreplicated, on host or device) as ``step``; also as best if
        ``metrics['score']`` beats the best so far."""
        items = _train_items(state)
        args = ocp.args.Composite(variables=ocp.args.StandardSave(items["variables"]),
                                  train_state=ocp.args.StandardSave(items["train_state"]),
                                  meta=ocp.args.JsonSave(meta))
        if step not in self.latest.all_steps():
            self.latest.save(step, args=args, force=True)
        if metrics is not None:
            self.best.save(step, args=args, metrics={"score": float(metrics["score"])},
                           force=True)
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def restore(self, state_template: TrainState, step: Optional[int] = None
                ) -> tuple[TrainState, dict]:
        """The state and meta of ``step`` (default: the latest complete one)."""
        step = self.latest.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("no complete checkpoint to resume from")
        template = _train_items(state_template)
        restored = self.latest.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(template["variables"]),
            train_state=ocp.args.StandardRestore(template["train_state"]),
            meta=ocp.args.JsonRestore()))
        v, t = restored["variables"], restored["train_state"]
        state = state_template.replace(
            step=t["step"], params=v["params"], batch_stats=v["batch_stats"],
            opt_state=t["opt_state"], rng=t["rng"], nonfinite_in_row=t["nonfinite_in_row"],
            nonfinite_total=t["nonfinite_total"])
        return state, dict(restored["meta"])

    def close(self) -> None:
        self.latest.close()
        self.best.close()
