"""Orbax checkpoints of training: the last K steps plus the best by validation mAP.

``workdir/checkpoints`` keeps the latest ``keep`` steps (saved every N steps and at each epoch
end); ``workdir/best`` keeps the one step with the highest validation mAP. Each step has the
items ``variables`` (params, batch_stats — what ``Detector.from_checkpoint`` reads),
``train_state`` (optimizer state, step, RNG, counters) and ``meta`` (JSON: data-loader position,
epoch, config name, class names, metrics). Orbax writes a step to a temporary directory and
renames it when complete, so a run killed mid-save resumes from the previous complete step.

Faults: a save that runs out of disk (ENOSPC, EDQUOT, EFBIG) raises ``CheckpointSaveError`` and
leaves the earlier steps as they were. ``restore()`` follows ``ssd_jax.checkpoints``' rules: the
latest step falls back to the one before (with a warning) when a step's files are unreadable,
e.g. truncated by a copy or a full disk; a step saved for another config (its tree differs from
the new config's) is refused with ``CheckpointTreeMismatchError`` naming the differences; and
``CheckpointRestoreError`` lists every step tried when none restores.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssd_jax.checkpoints import (
    RESTORE_ERRORS,
    CheckpointRestoreError,
    CheckpointTreeMismatchError,
    check_tree,
    first_line,
    restore_newest,
    saved_shapes,
    template_shapes,
)
from ssd_jax.errors import UserError
from ssd_jax.training.state import TrainState

__all__ = [
    "CheckpointRestoreError",
    "CheckpointSaveError",
    "CheckpointTreeMismatchError",
    "TrainCheckpointer",
]

log = logging.getLogger(__name__)

# errno → what ran out; orbax raises OSError for these, tensorstore a ValueError whose message
# ends in ``[os_error_code='28']``.
_SPACE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
}
_SPACE_MESSAGES = {os.strerror(code): reason for code, reason in _SPACE_ERRNOS.items()}


class CheckpointSaveError(UserError, OSError):
    """A step could not be written for lack of space; the steps saved before are intact."""


def _space_reason(exc: BaseException) -> str | None:
    """ "disk full" (or quota, file size) if ``exc`` or an exception it wraps is one; else None."""
    pending, seen = [exc], set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return _SPACE_ERRNOS[e.errno]
        text = str(e)
        code = re.search(r"os_error_code='(\d+)'", text)
        if code and int(code.group(1)) in _SPACE_ERRNOS:
            return _SPACE_ERRNOS[int(code.group(1))]
        for message, reason in _SPACE_MESSAGES.items():
            if message in text:
                return reason
        pending.extend(getattr(e, "exceptions", ()))  # ExceptionGroup from asyncio
        pending.extend([e.__cause__, e.__context__])
    return None


def _manager(directory: str, keep: int, best: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=False,
        best_fn=(lambda m: m["score"]) if best else None,
        best_mode="max",
        keep_checkpoints_without_metrics=not best,
    )
    # Handlers named up front, so that a fresh manager (a resumed run) can read a step's
    # metadata before restoring it.
    handlers = {
        "variables": ocp.StandardCheckpointHandler(),
        "train_state": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=options,
        item_names=tuple(handlers),
        item_handlers=handlers,
    )


def _train_items(state: TrainState) -> dict[str, Any]:
    host = jax.tree.map(np.asarray, state)
    return {
        "variables": {"params": host.params, "batch_stats": host.batch_stats},
        "train_state": {
            "step": host.step,
            "opt_state": host.opt_state,
            "rng": host.rng,
            "nonfinite_in_row": host.nonfinite_in_row,
            "nonfinite_longest": host.nonfinite_longest,
            "nonfinite_total": host.nonfinite_total,
        },
    }


class TrainCheckpointer:
    """Saves and restores (TrainState, meta) under a workdir."""

    def __init__(self, workdir: str, keep: int = 3):
        self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
        self.best = _manager(os.path.join(workdir, "best"), 1, best=True)
        self._unreadable: set[int] = set()  # steps that restore() found broken

    def save(self, step: int, state: TrainState, meta: dict, metrics: dict | None = None) -> None:
        """Save ``state`` (unreplicated, on host or device) as ``step``; also as best if
        ``metrics['score']`` beats the best so far.

        A step already saved is kept as it is, unless ``restore`` found it unreadable: then it is
        replaced. Raises CheckpointSaveError when the disk (or quota, or file size limit) runs
        out; orbax's half-written ``<step>.orbax-checkpoint-tmp*`` directory is then left behind,
        ignored by ``restore`` and replaced by the next save of that step.
        """
        items = _train_items(state)
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave(items["variables"]),
            train_state=ocp.args.StandardSave(items["train_state"]),
            meta=ocp.args.JsonSave(meta),
        )
        if step in self._unreadable and step in self.latest.all_steps():
            log.warning(
                "replacing unreadable checkpoint step %d in %s", step, self.latest.directory
            )
            self.latest.delete(step)
        self._unreadable.discard(step)
        if step not in self.latest.all_steps():
            self._save(self.latest, step, args)
        if metrics is not None:
            self._save(self.best, step, args, metrics={"score": float(metrics["score"])})

    @staticmethod
    def _save(manager: ocp.CheckpointManager, step: int, args: Any, **kwargs: Any) -> None:
        try:
            manager.save(step, args=args, force=True, **kwargs)
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
            reason = _space_reason(e)
            if reason is None:
                raise
            raise CheckpointSaveError(
                f"{reason} while saving step {step} to {manager.directory}; earlier checkpoints "
                f"are intact (latest complete step: {manager.latest_step()}). Free space and "
                "resume with --resume."
            ) from e

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(
        self, state_template: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict]:
        """The state and meta of ``step`` (default: the latest complete one that restores).

        Without ``step``, steps are tried newest first: one whose files are cut, missing or
        corrupt is logged as a warning and the step before it is tried. A step saved for
        another config raises CheckpointTreeMismatchError. Raises FileNotFoundError when there
        is no complete step, and CheckpointRestoreError naming every step tried (or the one
        asked for) with its error when none restores.
        """
        directory = self.latest.directory
        steps = list(self.latest.all_steps())
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"no complete checkpoint step {step} in {directory} "
                    f"(complete steps: {sorted(steps)})"
                )
            try:
                return self._restore(state_template, step)
            except RESTORE_ERRORS as e:
                if isinstance(e, CheckpointTreeMismatchError):
                    raise
                raise CheckpointRestoreError(
                    f"cannot restore step {step} from {directory}: {first_line(e)}"
                ) from e
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint to resume from in {directory}")
        _, result, unreadable = restore_newest(
            steps, lambda s: self._restore(state_template, s), str(directory)
        )
        if unreadable:
            log.warning("steps %s will be replaced when training saves them again", unreadable)
        self._unreadable.update(unreadable)
        return result

    def _restore(self, state_template: TrainState, step: int) -> tuple[TrainState, dict]:
        template = _train_items(state_template)
        where = f"checkpoint step {step} in {self.latest.directory}"
        for item in ("variables", "train_state"):
            check_tree(
                saved_shapes(self.latest, step, item),
                template_shapes(template[item]),
                f"{where} ({item})",
            )
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(template["variables"]),
                train_state=ocp.args.StandardRestore(template["train_state"]),
                meta=ocp.args.JsonRestore(),
            ),
        )
        v, t = restored["variables"], restored["train_state"]
        state = state_template.replace(
            step=t["step"],
            params=v["params"],
            batch_stats=v["batch_stats"],
            opt_state=t["opt_state"],
            rng=t["rng"],
            nonfinite_in_row=t["nonfinite_in_row"],
            nonfinite_longest=t["nonfinite_longest"],
            nonfinite_total=t["nonfinite_total"],
        )
        return state, dict(restored["meta"])

    def close(self) -> None:
        self.latest.close()
        self.best.close()
