"""Process set-up: the heap keeps freed blocks, so a training step's large tensors are reused
instead of page-faulted in again."""

from __future__ import annotations

import resource

import torch

from align.runtime import keep_freed_memory


def _faults_to_fill(n_bytes: int) -> int:
    """Minor page faults taken while allocating and writing a fresh tensor of n_bytes."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(n_bytes, dtype=torch.uint8)
    x.fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
    return faults


def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    assert keep_freed_memory()  # CI and this project's machines run Linux with glibc
    size = 256 << 20  # above glibc's default mmap threshold (at most 32 MB)
    _faults_to_fill(size)  # the heap grows once
    # without the setting each allocation is a fresh mmap: 256 MB / 4 KB = 65536 faults
    assert _faults_to_fill(size) < 1000
