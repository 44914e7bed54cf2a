"""``train_and_evaluate(config, workdir)``: the training loop behind ``train.py``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.contrib.logging import logging_redirect_tqdm

from ssd_jax import host_memory
from ssd_jax.config import check_batch_divisible, validate_config
from ssd_jax.data.pipeline import make_train_loader
from ssd_jax.data.sources import build_source
from ssd_jax.evaluation.evaluate import evaluate_coco, evaluate_voc, metric_for
from ssd_jax.evaluation.inference import make_p_detect
from ssd_jax.models.assembly import config_anchors, init_variables, model_for, zero_variables
from ssd_jax.outputs import check_workdir, move_aside
from ssd_jax.parallel import replicate, shard_batch, unreplicate
from ssd_jax.progress import progress
from ssd_jax.training import optim
from ssd_jax.training.checkpointing import TrainCheckpointer
from ssd_jax.training.init import check_starting_point, initial_variables
from ssd_jax.training.state import create_train_state
from ssd_jax.training.step import make_p_train_step
from ssd_jax.visualize import write_curves

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss."""


def adopt_classes(config: ml_collections.ConfigDict, source: Any) -> None:
    """The class list comes from the data: set class_names, category_ids (the source's
    ``cat_ids``, else label + 1) and model.num_classes to match it."""
    class_names = list(source.class_names)
    if class_names != list(config.class_names):
        log.info(
            "data has %d classes (%s...); the config had %d",
            len(class_names),
            ", ".join(class_names[:5]),
            len(config.class_names),
        )
    config.class_names = tuple(class_names)
    config.category_ids = tuple(
        int(c) for c in getattr(source, "cat_ids", range(1, len(class_names) + 1))
    )
    config.model.num_classes = len(class_names)


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet:
    tensorboardX imports it (1.2 s) only to accept torch tensors, and we log Python floats.
    Raises ImportError without tensorboardX."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # ``import torch`` raises ImportError, which it handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            try:
                self.tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))
            except ImportError:
                log.warning("tensorboardX not installed: no TensorBoard logs")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train (resuming from ``workdir`` when asked and possible), validate, checkpoint.

    ``workdir`` must be new or empty, unless ``resume`` (continue the run it holds) or
    ``overwrite`` (the run it holds is first renamed to ``<workdir>.old-<date>-<time>``):
    runs never mix (``ssd_jax.outputs.check_workdir``). Returns the final state's host copy of
    variables and the last validation metrics.
    """
    validate_config(config)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if not resume:  # refuse a by-omission scratch VGG16 before the slow steps (and --overwrite)
        check_starting_point(config)
    prepare_workdir(workdir, resume=resume, overwrite=overwrite)
    t = config.train
    train_source = build_source(config, "train")
    adopt_classes(config, train_source)
    val_source = build_source(config, "val")
    os.makedirs(workdir, exist_ok=True)  # once the data has been read: a mistake leaves nothing

    devices = jax.local_device_count()
    global_batch = t.batch_size
    check_batch_divisible(global_batch, jax.process_count() * devices)
    steps_per_epoch = max(1, len(train_source) * config.schedule.dataset_repeat // global_batch)
    total_steps = t.get("num_steps", 0) or config.schedule.epochs * steps_per_epoch

    eval_model = model_for(config)
    anchors = config_anchors(config, eval_model)
    schedule = optim.lr_schedule(config, global_batch, steps_per_epoch)
    tx = optim.sgd(config, schedule)

    checkpointer = TrainCheckpointer(workdir, keep=t.keep_ckpts)
    loader = make_train_loader(
        train_source,
        config,
        global_batch_size=global_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        seed=t.seed,
        num_workers=config.data.workers,
        shuffle=config.data.get("shuffle", True),
    )
    try:
        history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "mAP": []}
        if resume and checkpointer.latest_step() is not None:
            # the checkpoint replaces every value: the template's zeros skip the initialisers
            state, meta = checkpointer.restore(
                create_train_state(zero_variables(config), tx, t.seed)
            )
            loader.set_state(meta["data_state"])
            history = meta.get("history", history)
            log.info("resumed from step %d", int(state.step))
        else:
            variables = initial_variables(
                config, lambda: init_variables(eval_model, config.input_size, t.seed)
            )
            state = create_train_state(variables, tx, t.seed)

        p_step = make_p_train_step(config, tx, np.concatenate(anchors), global_batch)
        p_detect = make_p_detect(config, eval_model, anchors) if val_source is not None else None
        writer = MetricWriter(workdir)
        start = int(state.step)
        pstate = replicate(state)
        metrics: dict[str, float] = {}
        last_eval: dict[str, Any] = {}
        # Log lines above the bar, never on its line.
        with logging_redirect_tqdm(loggers=[logging.getLogger("ssd_jax")]):
            bar = None  # made once the first step returns: its rate and ETA leave out the compile
            tick, tick_step = time.time(), start
            for step in range(start, total_steps):
                batch = next(loader)
                if bar is None:
                    log.info("host memory (malloc): %s", host_memory.describe())
                    log.info("step %d compiles the train step first (a minute or less)", step + 1)
                pstate, pmetrics = p_step(
                    pstate,
                    shard_batch(
                        {k: batch[k] for k in ("image", "boxes", "labels", "valid")}, devices
                    ),
                )
                done = step + 1
                first = bar is None
                if first:
                    bar = progress(
                        total_steps,
                        desc="train",
                        unit="step",
                        initial=done,
                        disable=jax.process_index() != 0,
                    )
                epoch_end = done % steps_per_epoch == 0
                if done % t.log_every == 0 or done == total_steps or epoch_end:
                    m = jax.tree.map(lambda a: float(np.asarray(a)[0]), pmetrics)
                    # The longest streak so far, so that one between two log steps is not missed.
                    longest = int(np.asarray(pstate.nonfinite_longest)[0])
                    rate = (done - tick_step) * global_batch / max(time.time() - tick, 1e-9)
                    tick, tick_step = time.time(), done
                    metrics = {
                        "loss": m["loss"],
                        "loss_cls": m["loss_cls"],
                        "loss_bbox": m["loss_bbox"],
                        "lr": float(schedule(step)),
                        "images_per_s": rate,
                        "nonfinite_total": int(np.asarray(pstate.nonfinite_total)[0]),
                        "skipped_images": loader.skipped_images,
                    }
                    writer.write(done, metrics)
                    history["step"].append(done)
                    history["loss"].append(m["loss"])
                    bar.set_postfix(
                        loss=f"{m['loss']:.3f}",
                        cls=f"{m['loss_cls']:.3f}",
                        box=f"{m['loss_bbox']:.3f}",
                        lr=f"{metrics['lr']:.2e}",
                        img_s=f"{rate:.1f}",
                    )
                    if longest >= t.max_nonfinite_in_row:
                        ids = batch["image_id"].tolist()
                        raise NonFiniteLossError(
                            f"{longest} consecutive steps, by step {done}, had a non-finite loss "
                            f"(updates skipped; last batch image ids {ids}). "
                            "Try a lower optimizer.lr or a longer warm-up, and check the data for "
                            "broken boxes."
                        )
                if not first:
                    bar.update(1)
                epoch = done // steps_per_epoch
                evaluate_now = (
                    epoch_end
                    and val_source is not None
                    and t.eval_every_epochs > 0
                    and epoch % t.eval_every_epochs == 0
                ) or (done == total_steps and val_source)
                if evaluate_now:
                    last_eval = validate(p_detect, pstate, val_source, config)
                    history["eval_step"].append(done)
                    history["mAP"].append(last_eval["mAP@0.5"])
                    writer.write(
                        done, {f"val/{k}": v for k, v in last_eval.items() if isinstance(v, float)}
                    )
                if done % t.ckpt_every == 0 or epoch_end or done == total_steps:
                    host_state = unreplicate(pstate)
                    checkpointer.save(
                        done,
                        host_state,
                        {
                            "data_state": loader.get_state(),
                            "epoch": epoch,
                            "config": config.name,
                            "class_names": list(config.class_names),
                            "category_ids": list(config.category_ids),
                            "history": history,
                            "metrics": {k: v for k, v in last_eval.items() if isinstance(v, float)},
                        },
                        metrics=last_eval if evaluate_now else None,
                    )
            if bar is not None:
                bar.close()
    finally:
        loader.close()  # its worker processes stop here, also on an error
    checkpointer.close()
    final = unreplicate(pstate)
    if jax.process_index() == 0:
        write_curves(history, os.path.join(workdir, "curves.png"))
    return {
        "variables": final.variables,
        "metrics": last_eval,
        "history": history,
        "step": int(final.step),
    }


def prepare_workdir(workdir: str, *, resume: bool, overwrite: bool) -> None:
    """``check_workdir`` on every process, then (``overwrite``) process 0 moves the earlier run
    aside; no process writes into ``workdir`` before every one has looked at it."""
    earlier = check_workdir(workdir, resume=resume, overwrite=overwrite)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ssd_jax: workdir checked")
    if earlier:
        if jax.process_index() == 0:
            log.warning(
                "--overwrite: moved the earlier run in %s to %s", workdir, move_aside(workdir)
            )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("ssd_jax: earlier run moved")


def validate(p_detect, pstate, source, config) -> dict[str, Any]:
    """Validation metrics of the current weights: COCO's, or VOC's (config.evaluation.metric).

    Adds ``score`` (what the best checkpoint is chosen by: COCO mAP, or VOC mAP) and
    ``mAP@0.5`` (for the curves).
    """
    variables = unreplicate({"params": pstate.params, "batch_stats": pstate.batch_stats})
    batch = max(
        config.test.batch_size - config.test.batch_size % jax.local_device_count(),
        jax.local_device_count(),
    )
    if metric_for(config, source) == "voc":
        metrics, _ = evaluate_voc(
            p_detect, variables, source, config, batch_size=batch, mode=config.evaluation.voc_mode
        )
        metrics = {k: v for k, v in metrics.items() if isinstance(v, float)}
        metrics.update({"score": metrics["mAP"], "mAP@0.5": metrics["mAP"]})
    else:
        metrics, _ = evaluate_coco(p_detect, variables, source, config, batch_size=batch)
        metrics.update({"score": metrics["bbox_mAP"], "mAP@0.5": metrics["bbox_mAP_50"]})
    log.info("validation: score %.4f, mAP@0.5 %.4f", metrics["score"], metrics["mAP@0.5"])
    return metrics
