"""Keep glibc from handing large tensor buffers back to the kernel after every training step.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (dynamic, at most 32 MiB by default) with
fresh ``mmap`` pages and trims the heap above ``M_TRIM_THRESHOLD``. A dense 8192-d latent makes
100 MB-scale weight, gradient and activation tensors, so every step mapped, faulted in and unmapped
them again: 12 MaskLAM d8192 train steps (batch 64, one thread) spent 4.2 s in the kernel with 1.66M
minor page faults; with the thresholds below, 0.0 s and 2, and the same loss to the last bit
(BENCHMARK.md, "Allocator"). Only the allocator's bookkeeping changes, never a number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD_BYTES = 1 << 30
"""Allocations below 1 GiB come from the heap, whose pages are reused from step to step."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Free heap above this is returned to the kernel; below it stays mapped for the next step."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers from glibc's ``malloc.h``."""

_done = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds once per process; False where there is no glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    _done = ok
    return ok
