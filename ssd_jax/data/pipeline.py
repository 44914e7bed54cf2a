"""grain loaders for training and evaluation.

    source = CocoSource(cfg.data.ann_file, cfg.data.img_dir, filter_train=True)
    train = make_train_loader(source, cfg, global_batch_size=64, seed=0, num_workers=2)
    batch = next(train)              # {"image": (B, S, S, 3), "boxes", "labels", ...}
    state = train.get_state()        # JSON-serialisable; train.set_state(state) resumes exactly

Worker processes (grain ``DataLoader``, ``worker_count=num_workers``) decode and augment single
examples; batches are assembled in the calling process. grain hands examples over in index order
whatever the worker count, and each example's random generator depends only on the seed and its
position in the stream, so the batches do not depend on ``num_workers``. A corrupt or unreadable
image is logged (naming the file), counted and replaced by the next example; it never raises out
of a loader.

Sources are grain random-access sources (``__len__``, ``__getitem__``) of records such as
``CocoSource`` or ``TfdsSource`` produce: a record has "image" (uint8 RGB array) or "file_name"
(read with ``ssd_jax.image_io.read_image_rgb``). Give sources a deterministic ``__repr__``: grain
checks it when restoring a state.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import grain.python as grain
import numpy as np
from absl import flags

from ssd_jax.data.transforms import train_transform
from ssd_jax.errors import UserError
from ssd_jax.preprocess import resize_image

log = logging.getLogger(__name__)

TRAIN_KEYS = ("image", "boxes", "labels", "valid", "image_id")
EVAL_KEYS = ("image", "scale_factor", "image_id", "valid_image", "ori_shape")
# Records read ahead per process (source.__getitem__ calls, which decode images for TFDS).
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)
# How often a waiting TrainIterator checks that its worker processes are alive.
_WORKER_CHECK_INTERVAL_S = 1.0


def make_train_loader(
    source: Any,
    cfg: Any,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int,
    num_workers: int,
    shuffle: bool = True,
) -> TrainIterator:
    """An endless iterator of augmented training batches for this process.

    Order: the source is split into ``process_count`` contiguous shards (each process reads only
    its own, the remainder dropped); every epoch the shard is shuffled anew (deterministic for
    ``seed``, a non-negative 32-bit int; in source order with ``shuffle`` False), and epochs
    repeat without end. Each example is decoded,
    augmented by ``transforms.train_transform`` with a generator seeded by (seed + its global
    position in the stream), and its boxes padded to M = ``cfg.train.max_boxes``. An image with
    more than M boxes after augmentation keeps the M largest by area (in their original order);
    a warning is logged once per image id.

    Batches of B = global_batch_size // process_count::

        {"image": (B, S, S, 3) RGB, S = cfg.input_size: uint8, or float32 (unclipped) when
                  cfg.augment.photometric distorts it as mmdetection does,
         "boxes": float32 (B, M, 4) xyxy pixels of the S×S input (padding: zeros),
         "labels": int32 (B, M) (padding: 0), "valid": bool (B, M),
         "image_id": int64 (B,)}
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by "
            f"process_count {process_count}"
        )
    shard_size = len(source) // process_count
    if shard_size == 0:
        raise ValueError(
            f"{source!r} has {len(source)} images, fewer than {process_count} processes"
        )
    shard = grain.ShardOptions(process_index, process_count, drop_remainder=True)
    sampler = grain.IndexSampler(
        num_records=len(source), shard_options=shard, shuffle=shuffle, num_epochs=None, seed=seed
    )
    batch_size = global_batch_size // process_count
    _allow_unparsed_absl_flags()
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[_TrainExample(cfg)],
        worker_count=num_workers,
        worker_buffer_size=batch_size,
        shard_options=shard,
        read_options=_READ_OPTIONS,
    )
    return TrainIterator(loader, batch_size, shard_size, num_workers)


def make_eval_loader(
    source: Any,
    cfg: Any,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> EvalLoader:
    """Evaluation batches in source order, resized only (mmdet test pipeline), for this process.

    Process p gets the p-th of ``process_count`` contiguous blocks of ceil(N / process_count)
    images; every process yields the same number of batches, the last ones padded. Each pass
    over the returned loader iterates the block once. Batches of ``batch_size``::

        {"image": uint8 (B, S, S, 3) RGB, cv2 bilinear to S = cfg.input_size, no aspect ratio,
         "scale_factor": float32 (B, 2) (w_scale, h_scale) = (S / w, S / h),
         "image_id": int64 (B,), "valid_image": bool (B,),
         "ori_shape": int32 (B, 2) (h, w) of the decoded image}

    Padding entries (and corrupt images, which are logged and counted in ``skipped_images``)
    have ``valid_image`` False, a zero image, image_id -1, scale_factor (1, 1) and ori_shape
    (S, S).
    """
    per_process = math.ceil(len(source) / process_count)
    num_batches = math.ceil(per_process / batch_size)
    start = min(process_index * per_process, len(source))
    stop = min(start + per_process, len(source))
    indices = np.full(num_batches * batch_size, -1, np.int64)
    indices[: stop - start] = np.arange(start, stop)
    view = _PaddedView(source, indices)
    _allow_unparsed_absl_flags()
    loader = grain.DataLoader(
        data_source=view,
        sampler=grain.IndexSampler(
            num_records=len(view), shard_options=grain.NoSharding(), shuffle=False, num_epochs=1
        ),
        operations=[_EvalExample(cfg.input_size)],
        worker_count=num_workers,
        worker_buffer_size=batch_size,
        read_options=_READ_OPTIONS,
    )
    return EvalLoader(loader, batch_size, num_batches)


def _allow_unparsed_absl_flags() -> None:
    """Let grain's workers start outside ``absl.app`` (scripts without absl, pytest, notebooks).

    grain 0.2.18 reads its ``--grain_enable_multiprocess_worker_profiling`` flag when JAX is
    importable and raises ``UnparsedFlagAccessError`` if absl flags were never parsed (grain issue
    #1355, fixed after 0.2.18). Marking them parsed keeps every flag at its default; a later
    ``absl.app.run`` still parses the command line.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def pad_boxes(
    boxes: np.ndarray, labels: np.ndarray, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 4) boxes and (n,) labels → (M, 4) float32, (M,) int32, (M,) bool valid; M = max_boxes.

    More than M boxes: the M largest by area are kept, in their original order.
    """
    if len(labels) > max_boxes:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = np.sort(np.argsort(-area, kind="stable")[:max_boxes])
        boxes, labels = boxes[keep], labels[keep]
    n = len(labels)
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    out_labels = np.zeros(max_boxes, np.int32)
    out_boxes[:n], out_labels[:n] = boxes, labels
    return out_boxes, out_labels, np.arange(max_boxes) < n


def load_image(record: dict[str, Any]) -> np.ndarray | str:
    """The record's uint8 RGB image, or an error message naming the file when it cannot be read."""
    if "image" in record:
        return record["image"]
    from ssd_jax.image_io import ImageReadError, read_image_rgb

    try:
        return read_image_rgb(record["file_name"])
    except (ImageReadError, OSError) as e:
        path, message = record["file_name"], str(e)
        return message if path in message else f"{path}: {message}"


_watching_parent = False


def _exit_with_parent() -> None:
    """In a grain worker process: start a thread that ends the process once its parent is gone.

    A training process killed with SIGKILL (or by the out-of-memory killer) cannot stop its
    workers, and grain 0.2's workers then live on as orphans, blocked on a queue nobody reads.
    A no-op outside grain's worker processes and after the first call.
    """
    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True
    if not multiprocessing.current_process().name.startswith("grain-"):
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WORKER_CHECK_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _TrainExample(grain.RandomMapTransform):
    """record → augmented, padded example; or {"error", "image_id"} for an unreadable image."""

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg
        self._max_boxes = int(cfg.train.max_boxes)

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        _exit_with_parent()
        image = load_image(record)
        if isinstance(image, str):
            return {"error": image, "image_id": record["image_id"]}
        out = train_transform(record, image, rng, self._cfg)
        # A box cut to (almost) nothing by the image border can come out of the resize with
        # x1 == x2 or y1 == y2; its regression target would be log(0).
        b = out["boxes"]
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        boxes, labels, valid = pad_boxes(b[keep], out["labels"][keep], self._max_boxes)
        return {
            "image": out["image"],
            "boxes": boxes,
            "labels": labels,
            "valid": valid,
            "image_id": np.int64(record["image_id"]),
            "num_boxes": int(keep.sum()),
        }


class _EvalExample(grain.MapTransform):
    """record (or padding) → resized example; an unreadable image becomes padding plus "error"."""

    def __init__(self, size: int) -> None:
        self._size = int(size)

    def map(self, record: dict[str, Any] | None) -> dict[str, Any]:
        _exit_with_parent()
        if record is None:
            return self._padding()
        image = load_image(record)
        if isinstance(image, str):
            return {**self._padding(), "error": image}
        resized, scale = resize_image(image, self._size)
        return {
            "image": resized,
            "scale_factor": scale,
            "image_id": np.int64(record["image_id"]),
            "valid_image": np.bool_(True),
            "ori_shape": np.array(image.shape[:2], np.int32),
        }

    def _padding(self) -> dict[str, Any]:
        s = self._size
        return {
            "image": np.zeros((s, s, 3), np.uint8),
            "scale_factor": np.ones(2, np.float32),
            "image_id": np.int64(-1),
            "valid_image": np.bool_(False),
            "ori_shape": np.array([s, s], np.int32),
        }


class _PaddedView:
    """Random-access view of ``source`` at ``indices`` (int64 (K,)); index -1 reads as None."""

    def __init__(self, source: Any, indices: np.ndarray) -> None:
        self._source = source
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, k: int) -> dict[str, Any] | None:
        i = int(self._indices[k])
        return None if i < 0 else self._source[i]

    def __repr__(self) -> str:
        return f"_PaddedView({self._source!r}, {len(self)} entries)"


class NoReadableImageError(UserError, RuntimeError):
    """Not one image of a whole epoch (of this process's shard) could be read."""


class DataWorkerDiedError(RuntimeError):
    """A data worker process ended unexpectedly (e.g. killed for lack of memory)."""


class TrainIterator:
    """Endless training batches (see ``make_train_loader``) with resumable state.

    ``skipped_images`` counts the unreadable images replaced so far (restored with the state).
    With worker processes, a batch is assembled in a helper thread while this one checks every
    second that the workers are alive: a worker that died raises ``DataWorkerDiedError`` instead
    of a hang (grain 0.2 can wait for ever on the rest of a dead worker's last message).
    """

    def __init__(
        self, loader: grain.DataLoader, batch_size: int, shard_size: int, num_workers: int = 0
    ) -> None:
        self._iterator = iter(loader)
        self._batch_size = batch_size
        self._shard_size = shard_size
        self._warned_ids: set[int] = set()
        self._closed = False
        self._num_workers = num_workers
        self._failed = False  # the pipeline raised: its workers may be dead or stuck
        self.skipped_images = 0

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise ValueError("next() on a closed TrainIterator")
        if not self._num_workers:
            return self._next_batch()
        # A daemon thread (not an executor's, which the interpreter joins at exit): one stuck
        # on a dead worker's queue must not keep the process alive.
        outcome: dict[str, Any] = {}

        def fetch() -> None:
            try:
                outcome["batch"] = self._next_batch()
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                outcome["error"] = e

        fetcher = threading.Thread(target=fetch, name="train-batch", daemon=True)
        fetcher.start()
        while True:
            fetcher.join(_WORKER_CHECK_INTERVAL_S)
            if not fetcher.is_alive():
                break
            dead = [w for w in _worker_processes(self._iterator) if w.exitcode]
            if dead:
                self._failed = True
                self.close()
                codes = ", ".join(f"pid {w.pid}: exit code {w.exitcode}" for w in dead)
                raise DataWorkerDiedError(
                    f"a data worker process was terminated unexpectedly ({codes}). "
                    "Exit code -9 (SIGKILL) is what the out-of-memory killer sends: "
                    "lower data.workers or the batch size."
                )
        if "error" in outcome:
            self._failed = True
            raise outcome["error"]
        return outcome["batch"]

    def _next_batch(self) -> dict[str, np.ndarray]:
        examples: list[dict[str, Any]] = []
        failures_in_row = 0
        while len(examples) < self._batch_size:
            example = next(self._iterator)
            if "error" in example:
                self._skip(example)
                failures_in_row += 1
                if failures_in_row > self._shard_size:
                    raise NoReadableImageError(
                        f"no readable image in a whole epoch of this shard ({self._shard_size} "
                        f"images), e.g. {example['error']}"
                    )
                continue
            failures_in_row = 0
            self._warn_truncated(example)
            examples.append(example)
        return {k: np.stack([e[k] for e in examples]) for k in TRAIN_KEYS}

    def _skip(self, example: dict[str, Any]) -> None:
        self.skipped_images += 1
        log.warning(
            "skipped image %s (%d skipped so far): %s",
            example["image_id"],
            self.skipped_images,
            example["error"],
        )

    def _warn_truncated(self, example: dict[str, Any]) -> None:
        image_id = int(example["image_id"])
        n, limit = example["num_boxes"], len(example["valid"])
        if n > limit and image_id not in self._warned_ids:
            self._warned_ids.add(image_id)
            log.warning(
                "image %d has %d boxes after augmentation; kept the %d largest "
                "(cfg.train.max_boxes)",
                image_id,
                n,
                limit,
            )

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the worker processes now (idempotent), within about ``timeout_s`` seconds.

        Without it they stop when the iterator is garbage-collected, at whatever point the
        collector runs. grain's close runs in a helper thread: after a worker died (e.g. killed
        for lack of memory) it can wait for ever on the rest of a half-written message, and a
        worker that does not stop takes it 25 s. Workers still alive after ``timeout_s`` (at
        most 5 s once the pipeline has raised) are killed.
        """
        if self._closed:
            return
        self._closed = True
        if self._failed:
            timeout_s = min(timeout_s, 5.0)
        workers = _worker_processes(self._iterator)
        # grain 0.2's DataLoaderIterator has no close(); its dataset iterator closes the
        # pipeline, worker processes included.
        inner = getattr(self._iterator, "_iterator", None)
        if inner is None or not hasattr(inner, "close"):
            return
        closer = threading.Thread(target=inner.close, name="close-train-loader", daemon=True)
        closer.start()
        closer.join(timeout_s)
        alive = [w for w in workers if w.is_alive()]
        if closer.is_alive() or alive:
            log.warning(
                "the data workers did not stop within %.0f s (exit codes %s); killing them",
                timeout_s,
                [w.exitcode for w in workers],
            )
            _stop_processes(alive)

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch returned, as a JSON-serialisable dict."""
        return {
            "grain": json.loads(self._iterator.get_state()),
            "skipped_images": self.skipped_images,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue after the batch at which ``state`` was taken (same source, seed, workers)."""
        self._iterator.set_state(json.dumps(state["grain"]).encode())
        self.skipped_images = int(state["skipped_images"])


def _worker_processes(iterator: Any) -> list[multiprocessing.process.BaseProcess]:
    """The worker processes that a grain iterator holds, found among the attributes of the
    grain objects it refers to (grain keeps no public list of them)."""
    found: list[multiprocessing.process.BaseProcess] = []
    seen: set[int] = set()
    stack: list[Any] = [iterator]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, multiprocessing.process.BaseProcess):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("grain.") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def _stop_processes(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Terminate, then kill what is still alive after a few seconds."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


class EvalLoader:
    """Re-iterable evaluation batches (see ``make_eval_loader``); ``len`` is batches per pass."""

    def __init__(self, loader: grain.DataLoader, batch_size: int, num_batches: int) -> None:
        self._loader = loader
        self._batch_size = batch_size
        self._num_batches = num_batches
        self.skipped_images = 0

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        examples: list[dict[str, Any]] = []
        for example in self._loader:
            if "error" in example:
                self.skipped_images += 1
                log.warning(
                    "skipped image in evaluation (%d so far): %s",
                    self.skipped_images,
                    example["error"],
                )
            examples.append(example)
            if len(examples) == self._batch_size:
                yield {k: np.stack([e[k] for e in examples]) for k in EVAL_KEYS}
                examples = []
