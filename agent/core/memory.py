"""glibc's allocator, set up for a process that runs all day with a dozen threads.

By default glibc gives each thread that allocates its own arena (up to 8 per core) and raises
its mmap threshold each time a large block is freed (up to 32 MB). The agent hands ~0.6 MB
segments and decoder buffers from thread to thread: once the threshold has risen they come from
the arenas, and what one thread freed sits in another's high-water mark; RSS grew in steps of
about one such block, +24 to +43 MB an hour over a 10-minute run (issue 15). So: a fixed mmap
threshold (blocks of 256 kB or more go back to the kernel when freed; the frame buffers that
would be above it are pooled, agent/capture/frames.py), two arenas, and the free memory of the
heap handed back once a minute (malloc_trim).

Elsewhere than glibc (musl, macOS) these are no-ops that say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Fixed, so glibc's dynamic threshold never moves it up; below a segment (~0.6 MB at 2.5 Mbit/s),
# above Python's small objects and numpy's small arrays.
MMAP_THRESHOLD_BYTES = 256 * 1024
# Two arenas: the encode thread and the rest rarely contend for long (one lock per malloc).
ARENA_MAX = 2
# Trim the heap's top once this much is free (glibc's default, stated: fixing the mmap threshold
# also fixes this one, which would otherwise follow it).
TRIM_THRESHOLD_BYTES = 128 * 1024
TRIM_INTERVAL_S = 60.0  # malloc_trim from the supervision loop


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def tune_allocator() -> bool:
    """Call once at start, before the worker threads exist. False when not glibc."""
    if _LIBC is None:
        log.info("not glibc: the allocator keeps its defaults")
        return False
    ok = all(
        _LIBC.mallopt(option, value) == 1
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not ok:
        log.warning("glibc refused an allocator setting; memory may grow in steps")
    return ok


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel (a few ms at most)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
