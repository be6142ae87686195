"""Fix glibc malloc's thresholds for a benchmark process, so that its state cannot pick winners.

asyncio's socket transport reads into a fresh 256 KiB `bytes` on every read (aiosmtplib and the
bare asyncio loop go through it). glibc serves a request that size from `mmap` until it has seen
such a block freed, then raises its mmap threshold and serves it from the heap; whether that
happened depends on what the process did before (the harness forks each sender from one parent,
so the parent's history decides for all of them). In the first state every read costs an `mmap`,
an `mremap`, a `munmap` and fresh pages faulted in: the bare asyncio loop measured 54-70 µs of
CPU a message in 4 of 6 runs, 22-28 µs in the others. `mallopt` with fixed values ends that
choice (an explicit threshold also turns glibc's adaptation off): every such buffer comes from
the heap, and freed heap memory stays in the process up to 64 MiB instead of being trimmed and
faulted in again. The pool's asyncio stream reads into one shared buffer, and its trio stream
reads at most 64 KiB, below glibc's starting threshold of 128 KiB: this helps only the others.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 64 << 20


def steady_allocator() -> str:
    """Set the thresholds in this process (and the children it forks); say what was done."""
    if not sys.platform.startswith("linux"):
        return "allocator: left as it is (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator: left as it is (no glibc mallopt)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return "allocator: left as it is (mallopt refused)"
    if not mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return "allocator: left as it is (mallopt refused)"
    return (
        f"allocator: glibc mmap threshold {MMAP_THRESHOLD >> 10} KiB and trim threshold "
        f"{TRIM_THRESHOLD >> 20} MiB, fixed (see bench/allocator.py)"
    )
