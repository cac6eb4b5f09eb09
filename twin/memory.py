"""Keep the memory a process frees for its next use: `keep_freed_memory()`.

The detectors and analytics build their results in large temporary arrays (hundreds of MB
for 100,000 meters x 30 days) and free them when done. By default glibc hands every block
above 32 MB (the mmap threshold) back to the kernel when freed, and trims the top of its
heap; the next run asks for the memory again and the kernel must zero every page as it is
first touched. Measured on 100,000 meters x 30 days at 15 minutes (all analytics and
detectors, `python -m bench detect`): about 1.1 s of kernel time per run went to that,
against about 2.8 s of work.

`keep_freed_memory()` raises both thresholds (mallopt M_MMAP_THRESHOLD and
M_TRIM_THRESHOLD), so large blocks come from the heap and stay with the process once freed:
the next run reuses them without a page fault. The cost: the process keeps its peak heap
between runs (what the next run needs again). `metertwin` calls it at start; on a C
library without mallopt (not glibc) it does nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap; the heap is trimmed only past twice it.
KEEP_BYTES = 1 << 30
_INT_MAX = 2**31 - 1  # mallopt takes an int


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Ask glibc to keep freed blocks up to `keep_bytes` (and a heap top up to twice it) in
    the process; True when it took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    keep = min(keep_bytes, _INT_MAX)
    return bool(mallopt(M_MMAP_THRESHOLD, keep)) and bool(mallopt(M_TRIM_THRESHOLD, min(2 * keep, _INT_MAX)))


__all__ = ["keep_freed_memory"]
