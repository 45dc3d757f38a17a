"""glibc malloc tuning for the processes that move bulk samples: the producer and the workers.

Each real DAQ file passes through a process as a few hundred MB of short-lived large buffers
(the file, its messages, Kafka requests and fetch responses). glibc serves blocks above its mmap
threshold (adaptive, 128 KiB to 32 MiB) with a fresh mmap() and returns them with munmap(), so
the kernel faults in and zeroes every page again for the next file. Measured on the 2-core box
at max pace, that page churn was two thirds of the producer's CPU (docs/performance.md).
``keep_freed_memory`` makes glibc serve such blocks from its heap and keep freed memory for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def keep_freed_memory(mmap_threshold_bytes: int = 256 << 20, trim_threshold_bytes: int = 1 << 30) -> bool:
    """Blocks below mmap_threshold_bytes come from the heap, and up to trim_threshold_bytes of
    freed heap stay mapped; all threads share the main heap (the reader thread of the producer,
    Faust's consumer thread: a thread's own arena is capped at 64 MiB, smaller than one file, and
    would map it afresh each time). Returns False where glibc's mallopt is missing."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        log.info("no glibc mallopt here: large buffers are mapped and unmapped per use")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)
                and mallopt(M_TRIM_THRESHOLD, trim_threshold_bytes))
