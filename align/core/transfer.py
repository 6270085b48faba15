"""Host-to-device copies that do not stall the host.

A plain `tensor.to("cuda")` from pageable memory waits until the GPU has finished everything
queued before it; every batch built on the host would then cost a full drain of the GPU's queue.
Copying from pinned (page-locked) memory with `non_blocking=True` queues the copy behind that
work instead: the host goes on preparing the next batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`t` on `device`; host tensors bound for a GPU travel through pinned memory without a
    host sync (torch's pinned-memory allocator keeps the source alive until the copy ran)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
