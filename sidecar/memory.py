"""How a proxy process manages its memory: large buffers, and the long-lived heap.

Give large buffers back to the system when they are freed (glibc only).

glibc serves an allocation above `M_MMAP_THRESHOLD` (128 KiB) with its own mmap and
unmaps it on free, but each such free *raises* the threshold (up to 32 MiB), so later
multi-MiB buffers (a decoded response body, a buffered request) come from the heap and
its per-thread arenas instead, and stay resident after they are freed. The decode
budget then bounds what is held, not what is resident: 8 concurrent gzip bombs took the
sidecar to 222-259 MB with the moving threshold and 162-165 MB with it pinned
(tests/limits/test_budgets.py, docs/limits.md). Setting the threshold explicitly turns
the moving threshold off. The cost is one mmap/munmap per buffer above 128 KiB, small
beside what fills such a buffer (TLS, decompression, scanning).

Keep what the process built before serving out of garbage collection. Python's cyclic
collector now and then walks every tracked object of its oldest generation: here that
is mitmproxy, our modules, the policy and the pattern automata, objects that live as
long as the process. At 32 connections those full collections took 0.11-0.17 ms of every
request's CPU (issue 17). `gc.freeze()` moves what exists once the proxy runs into a
permanent generation that collections skip; what requests allocate is collected as
before. A cycle that was already garbage would never be collected, so the heap is
collected first; what startup built and a later reload drops (the first policy) is
freed by reference counting, and only its cycles, once, stay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own initial value


def pin_mmap_threshold() -> bool:
    """True if glibc took the setting; False where there is no glibc (musl, macOS),
    which is harmless: only resident memory after large frees is affected."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def freeze_startup_objects() -> None:
    """Collect, then freeze every object that exists (see the module doc). Called once,
    when the proxy runs."""
    gc.collect()
    gc.freeze()
