"""gaheads.cpu_memory: after keep_freed_memory(), a re-allocated large tensor reuses memory (no new page faults)."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from gaheads.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "reuse" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # 64 MiB, above glibc's largest default mmap threshold (32 MiB); the heap grows twice
    torch.empty(16 << 20).fill_(1.0)
before = faults()
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)  # freed at the end of each statement, as a step's activations are
print(applied, faults() - before)
"""
PAGES_64MIB = (64 << 20) // 4096


def run(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    # the ten 64 MiB blocks reuse the warm-up's pages. glibc now and then still maps some afresh: with
    # torch 2.6 one process in two faulted 1-7 blocks in again, so the best of three processes counts
    runs = [run("reuse") for _ in range(3)]
    assert all(applied == "True" for applied, _ in runs)
    assert min(faults for _, faults in runs) < 3 * PAGES_64MIB
    _, system_faults = run("system")
    assert system_faults > 9 * PAGES_64MIB  # glibc's default: mmap + zero-fill on every allocation


def test_system_malloc_opt_out(monkeypatch):
    from gaheads.cpu_memory import keep_freed_memory

    monkeypatch.setenv("GAHEADS_MALLOC", "system")
    assert keep_freed_memory() is False
