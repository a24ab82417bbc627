"""Keep freed host memory in the process (glibc malloc), so CPU training steps stop page-faulting.

On the CPU, torch's tensors come from malloc. glibc hands large blocks straight back to the kernel
when they are freed (blocks over the mmap threshold, and free space at the top of the heap over the
trim threshold), so every training step maps its activations afresh and page-faults them in again:
measured on the demo's tiny Qwen3 on this machine, ~36,000 minor faults and ~60 ms of system time
per step of ~590 ms CPU time with dynamic packing (variable row lengths), ~16,000 and ~30 ms with
fixed rows (bench/train_overhead.py prints the counts per step). How much of it a process pays
also depends on its history: glibc raises its mmap threshold each time it frees a mapped block, so
two processes running the same steps can differ, which is how a hand-written loop and the
generated script came apart by several percent on variable-length batches.

`keep_freed_memory()` fixes both thresholds (so glibc's dynamic adjustment is off): blocks up to
1 GiB come from the heap, and freed memory stays there for the next step, as CUDA's caching
allocator does for device memory. The process then holds its peak host memory for its lifetime,
and glibc may take a few steps to settle on a layout that fits every step (a test of five 20-48 MiB
blocks per step: no faults from the fourth step on, 457 MiB resident against 353 MiB without, where
every step faults 84 MiB in again).
runtime.dist.init calls it for CPU runs; elsewhere (not glibc, or a CUDA run, whose tensors do not
come from malloc) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 30       # blocks below this come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # never give the top of the heap back (mallopt takes an int)
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # Older glibc refuses an mmap threshold over 32 MiB (HEAP_MAX_SIZE / 2): then use that.
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    _done = bool(mapped and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
