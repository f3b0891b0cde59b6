"""CPU training speed: keep freed memory in the process instead of returning it to the OS every step.

torch has a caching allocator for CUDA but none for CPU tensors: they come from the C library's
malloc. glibc serves every block above its mmap threshold (at most 32 MiB by default) with a
fresh ``mmap`` and unmaps it on free, and trims the heap's free top back to the OS. A training
step frees and re-allocates the same activations and gradients every time, so each step pays
the kernel's page faults (zero-filling every page) again: 10-26% of the training throughput of
convolutional and CCT models on this project's 2-core CPU, more for models with more large
freshly-allocated tensors (the K-branch heads' activations and gradients), which inflates
their time against their plain backbones (docs/benchmarks.md).

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds (``mallopt``), so freed
blocks are reused by the next step: what jemalloc or tcmalloc (PyTorch's CPU tuning guide
recommends preloading one of them) do by default. The process keeps its peak heap for its
lifetime, which is what a training loop reaches again every step anyway.

``gaheads train`` on CPU and ``benchmarks/throughput.py`` call it; ``GAHEADS_MALLOC=system``
leaves the C library's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the (reused) heap
_TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's free top back


def keep_freed_memory() -> bool:
    """Set glibc malloc to reuse freed memory (see the module doc); True if it was set.

    No-op (False) off Linux, on a C library other than glibc, or with ``GAHEADS_MALLOC=system``.
    """
    if os.environ.get("GAHEADS_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError on musl and others)
    except (OSError, AttributeError):
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
