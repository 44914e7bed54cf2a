"""Progress for a terminal (tqdm's bar) or for a log file (a plain line now and then).

    bar = progress(3000, desc="train", unit="step")
    bar.update(1)
    bar.set_postfix(loss="0.512")
    bar.close()
    for i in track(range(n), desc="ground truth", unit="img"): ...

On a terminal this is tqdm's bar. When stderr is not a terminal (a log file, a pipe, a batch
job), a bar redrawn with carriage returns and cursor-up codes (``\\x1b[A``, for a bar inside
another) turns into garbage, so ``PlainProgress`` writes whole lines instead: one when it starts,
then at most one every ``every_s`` seconds, and one at the end, each with the count, the rate
and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def progress(
    total: int,
    *,
    desc: str,
    unit: str,
    initial: int = 0,
    disable: bool = False,
    every_s: float = 30.0,
) -> Any:
    """A progress display on stderr for ``total`` units (``initial`` already done): tqdm's bar
    on a terminal, else a ``PlainProgress``. Both have ``update(n)``, ``set_postfix(**kw)`` and
    ``close()``; the rate (and the time left) counts from the moment it is made."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            dynamic_ncols=True,
            disable=disable,
        )
    return PlainProgress(
        total, desc=desc, unit=unit, initial=initial, disable=disable, every_s=every_s
    )


def track(
    iterable: Iterable[T], *, total: int, desc: str, unit: str, disable: bool = False
) -> Iterator[T]:
    """The items of ``iterable`` (``total`` of them), shown as ``progress`` shows them."""
    bar = progress(total, desc=desc, unit=unit, disable=disable)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


class PlainProgress:
    """Progress as whole lines (no carriage returns, no escape codes), for log files:
    ``train: 120/3000 step (4%), 2.05 step/s, 23:24 left, loss=0.512``."""

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str,
        initial: int = 0,
        disable: bool = False,
        every_s: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.disable, self.every_s = disable, every_s
        self.file = file
        self.postfix = ""
        self.start = time.monotonic()
        self._last_t, self._last_n = self.start, None
        self._closed = False
        self._line()

    def update(self, n: int = 1) -> None:
        self.n += n
        # the last unit's line is close()'s, with the time it all took
        if self.n < self.total and time.monotonic() - self._last_t >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._line(done=True)

    def _line(self, done: bool = False) -> None:
        now = time.monotonic()
        self._last_t, self._last_n = now, self.n
        if self.disable:
            return
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n // self.total}%)"
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if done:
                parts.append(f"{clock(elapsed)} in all")
            else:
                parts.append(f"{clock((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.file or sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``1:02:03`` or ``02:03`` (as tqdm writes times)."""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
