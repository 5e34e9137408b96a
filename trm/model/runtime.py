"""Process-level CPU settings that make the model's large temporary tensors cheap.

    from trm.model.runtime import tune_cpu_allocator
    tune_cpu_allocator()          # once, early in a CPU training/eval process (Linux/glibc; no-op elsewhere)

Each TRM block allocates and frees tensors of tens of MB. glibc serves those with fresh mmap()s and gives the
memory back at free(), so every step page-faults the same memory in again (for the seed model at batch 8 on
CPU: about 1.5 M minor faults and seconds of system time per ACT step). Raising glibc's mmap and trim
thresholds keeps that memory in the heap and re-used. Equivalent environment variables, for launchers:
MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483648 MALLOC_TOP_PAD_=268435456.
The cost: the process keeps its peak heap instead of returning it to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("trm.model")

# mallopt() parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 31
TOP_PAD = 256 << 20


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds for this process; True when applied, False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.warning("mallopt refused a setting; the allocator keeps some of its defaults")
    return ok
