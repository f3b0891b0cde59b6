"""How many CPU threads torch should use: ``--threads N``, else ``OMP_NUM_THREADS``, else a
default that keeps working when another process is busy on the same cores.

torch's own default is one intra-op thread per core. Its OpenMP threads meet at a barrier
after every operation, so when another process holds one of the cores every operation waits
for the thread that was descheduled: on 2 cores with one competing busy process training ran
at a fifth of its quiet speed (docs/recipes.md, threads). Leaving a core free avoids that at
a small cost on an idle machine. Only the command-line entry points apply this (library code
never changes the process's thread count).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(environ: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """``OMP_NUM_THREADS`` when it is a positive integer, else half the usable cores (at least 1)."""
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return max(1, (usable_cores() if cores is None else cores) // 2)


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count to ``threads`` (None: :func:`default_threads`); the count set.

    For command-line entry points only: it changes process-wide state.
    """
    import torch

    n = default_threads() if threads is None else int(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
