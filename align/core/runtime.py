"""What `run_stage` sets up before every stage: all cores for torch, a heap that keeps freed memory.

glibc's malloc serves blocks above its mmap threshold (at most 32 MB by default) with fresh
`mmap` calls and unmaps them on free, so every step of a training loop page-faults and zeroes its
large tensors again (logits, their gradients, attention scores: hundreds of MB per step). With
the threshold and the trim threshold raised, freed blocks return to the heap and are reused:
0.77-0.88x the embedded model's bf16-weights step time, same peak RSS (BENCHMARKS.md "Where a
step's time goes"). Other allocators (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

# mallopt(3) parameters and the value both get: blocks up to 1 GiB come from the heap and stay
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, KEEP_BYTES = -1, -3, 1 << 30


def set_threads(n: int | None = None) -> None:
    """Use `n` threads for torch's operators, default every core the process may run on (torch
    defaults can undercount in containers). Two stages side by side, each in its own process,
    take a share of the cores each (flows/align.py)."""
    n = n or len(os.sched_getaffinity(0))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to KEEP_BYTES from the heap and not to trim it;
    True when glibc took both settings, False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None or os.uname().sysname != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(p, KEEP_BYTES) == 1 for p in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))


def prepare_process(threads: int | None = None) -> None:
    """What `run_stage` runs before every stage: `set_threads` and `keep_freed_memory`."""
    set_threads(threads)
    keep_freed_memory()
