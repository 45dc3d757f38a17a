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
import functools
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library, loaded once (the workers' memory timer asks for it every few seconds)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(mmap_threshold_bytes: int = 256 << 20, trim_threshold_bytes: int = 1 << 30) -> bool:
    """Blocks below mmap_threshold_bytes come from the heap, and up to trim_threshold_bytes of
    freed heap stay mapped; all threads share the main heap (the reader thread of the producer,
    Faust's consumer thread: a thread's own arena is capped at 64 MiB, smaller than one file, and
    would map it afresh each time). Returns False where glibc's mallopt is missing."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.info("no glibc mallopt here: large buffers are mapped and unmapped per use")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)
                and mallopt(M_TRIM_THRESHOLD, trim_threshold_bytes))


def release_free_memory(pad_bytes: int = 0) -> bool:
    """Hand every whole free page of the heap back to the kernel (glibc ``malloc_trim``).

    ``keep_freed_memory`` keeps freed blocks mapped for reuse, and a long-lived process whose
    allocations do not line up (Python objects, RocksDB memtables, Kafka buffers in one heap) then
    spreads over ever more pages: measured, a worker's heap grew from 95 to 347 MiB over 1,500 files
    while the bytes in use stayed between 57 and 98 MiB. Trimming now and then bounds the resident
    heap by what is in use, at the cost of faulting pages in again once per trim. Returns False
    where glibc's malloc_trim is missing."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim(pad_bytes)
    return True


def heap_bytes() -> dict[str, int] | None:
    """glibc's count of the main heap: {"in_use": allocated bytes, "free": freed bytes kept, "mapped":
    blocks served by mmap}; None where glibc's mallinfo2 is missing."""
    libc = _libc()
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        return None
    info.restype = _MallInfo2
    m = info()
    return {"in_use": int(m.uordblks), "free": int(m.fordblks), "mapped": int(m.hblkhd)}
