"""Keep freed host memory in the process (glibc's malloc), for XLA:CPU's per-call buffers.

XLA's CPU runtime allocates each call's temporaries as one block (SSDLite at batch 8: 152 MiB)
and frees it when the call returns. glibc serves blocks over 32 MiB, and any large block
requested from a thread other than the main one, with a fresh ``mmap`` and unmaps it on
``free``: every call then faults the block's pages in again (SSDLite batch 8: 39,000 faults,
56 ms of kernel time per call; on one 204800×16→96 product alone, 62 ms → 16 ms without the
faults). ONNX Runtime keeps its buffers in an arena and pays nothing of the kind.

``keep_freed_memory()`` makes glibc reuse freed blocks instead: one arena for all threads, no
``mmap`` for large blocks, and no trimming of the heap's top. The process keeps its peak
memory (as ONNX Runtime's arena does). SSDLite inference at batch 8 on 2 cores: 1.2× faster.
But the single arena slows multi-threaded work: the default run's train step was 1.15× slower
and its compile 1.25× slower. So the inference tools (``ssd-jax-predict``, ``-eval``,
``-benchmark --backends``) call it at start-up, and library users may call it before JAX's
first computation. Training (``ssd-jax-train``, and ``ssd-jax-benchmark``'s single-config
report) instead restarts itself with glibc's malloc on transparent huge pages
(``restart_with_huge_pages()``): the blocks are still mapped per call, but faulted in 2 MiB at
a time. ``SSD_JAX_KEEP_HOST_MEMORY=0``, or malloc options in the
environment (``GLIBC_TUNABLES``, ``MALLOC_*``), leave malloc as it is. Like XLA flags it only
reaches threads started afterwards.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_kept = False  # whether keep_freed_memory() configured malloc in this process

#: Environment variables that set glibc's malloc: where any is set, this module leaves malloc as
#: the user set it.
USER_SETTINGS = (
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc (mallopt, gnu_get_libc_version), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.gnu_get_libc_version  # noqa: B018  (both glibc's; musl lacks one)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Configure glibc as described above; returns whether it did (False off glibc/Linux, when
    opted out, or when the environment already sets malloc options)."""
    if not sys.platform.startswith("linux") or os.environ.get("SSD_JAX_KEEP_HOST_MEMORY") == "0":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _kept
    _kept = all(
        mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    )
    return _kept


#: The glibc tunable that makes malloc ask the kernel for transparent huge pages (2 MiB) for
#: its blocks (glibc >= 2.35).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_possible() -> bool:
    """Linux with glibc >= 2.35 and transparent huge pages on or on request (madvise)."""
    libc = _glibc() if sys.platform.startswith("linux") else None
    if libc is None:
        return False
    gnu_libc_version = libc.gnu_get_libc_version
    gnu_libc_version.restype = ctypes.c_char_p
    try:
        major, minor = (int(x) for x in gnu_libc_version().decode().split(".")[:2])
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read()
    except (OSError, ValueError):
        return False
    return (major, minor) >= (2, 35) and ("[always]" in thp or "[madvise]" in thp)


def restart_with_huge_pages() -> None:
    """Start this program again (same interpreter, arguments and environment) with glibc's
    malloc on transparent huge pages (HUGE_PAGES_TUNABLE); returns only where it does not.

    XLA:CPU's per-call blocks are then faulted in 2 MiB at a time instead of 4 KiB: the SSDLite
    train step at batch 8 ran 1.36× and 1.53× faster in two alternated sets, SSD300's 0.96× (AMD
    EPYC with AVX2, 2 cores; docs/benchmarks/huge_pages_2026-12-07_avx2.json), with the same
    peak memory. glibc reads its tunables only when a process starts, hence the restart; the
    training and benchmark tools do it before importing JAX, when run as programs.
    ``SSD_JAX_HUGE_PAGES=0``, or malloc options in the environment, leave malloc as it is."""
    if os.environ.get("SSD_JAX_HUGE_PAGES") == "0":
        return
    if any(name in os.environ for name in USER_SETTINGS):  # also: this is the restart
        return
    if not huge_pages_possible():
        return
    env = dict(os.environ, GLIBC_TUNABLES=HUGE_PAGES_TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def describe() -> str:
    """How glibc's malloc is set in this process, in words for logs and reports."""
    if HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        return f"transparent huge pages (GLIBC_TUNABLES={HUGE_PAGES_TUNABLE})"
    if _kept:
        return "freed memory kept (one arena, no mmap, no trimming)"
    given = [f"{name}={os.environ[name]}" for name in USER_SETTINGS if name in os.environ]
    return ", ".join(given) if given else "glibc's defaults"
