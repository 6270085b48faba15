"""The pairing rule shared by everything that turns K-wise records into preference pairs (the
pair losses, the logged chosen/rejected figures, BMC's rewrite stage): best against worst."""

from __future__ import annotations

import torch
from torch import Tensor


def best_worst_pairs(rewards: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pairing rule for pair losses on K-wise data: best against worst valid response.

    rewards, mask: ``[B, K]``. Returns ``(chosen_idx, rejected_idx, has_preference)``, each
    ``[B]``: chosen is the highest-reward valid response, rejected the lowest; ties go to the
    lowest index. ``has_preference`` is False for rows whose valid rewards are all equal
    (including rows with fewer than two valid responses); their indices are meaningless.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    mask = mask.bool()
    r = rewards.detach()
    highest = torch.where(mask, r, float("-inf"))
    lowest = torch.where(mask, r, float("inf"))
    chosen_idx = highest.argmax(-1)
    rejected_idx = lowest.argmin(-1)
    has_preference = highest.amax(-1) > lowest.amin(-1)
    return chosen_idx, rejected_idx, has_preference
