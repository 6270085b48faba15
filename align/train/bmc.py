"""BMC token weights: confidence-weighted pair losses on the tokens a targeted rewrite changed.

Jiang et al., "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization", arXiv 2408.07471 (ICLR 2025); official code YJiangcm/BMC.

Pipeline, with the cost where it belongs:

1. Once per dataset, in the rewrite stage: the diff masks of every pair
   (align/rewrite/masks.py), stored with the rewritten records.
2. Every step, here: ``bmc_weighted_logps`` turns per-token log-probs and the diff masks into
   weighted sequence log-probs, which the pair loss (``dpo_bmc``, ``ipo_bmc``, ...) consumes.

A changed token t gets weight ``1 + min(1 / p_t, delta)`` (``p_t`` the model's probability of
the token, no gradient through it); every other token keeps weight 1.

``ref_weights`` decides whose confidence weights the reference term:

- ``"reference"`` (default, the official code): each model's log-probs are weighted by that
  model's own confidence, because its forward pass computes the weights from whichever model it
  runs.
- ``"policy"`` (the paper's text): the reference log-probs are weighted by the policy's
  confidence too. The reference term carries no gradient, so the choice only shifts the margin
  inside the sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from align.core.transfer import to_device

__all__ = [
    "bmc_batch_logps",
    "bmc_token_weights",
    "bmc_weighted_logps",
    "pad_rows",
    "weighted_sequence_logps",
]


def bmc_token_weights(token_logps: Tensor, diff_mask: Tensor, *, delta: float) -> Tensor:
    """Per-token weights ``1 + m_t * min(1 / p_t, delta)``, computed without gradient.

    token_logps: ``[..., T]`` log p_t of the response tokens (``[B, T]`` or ``[B, K, T]``);
    diff_mask: same shape, 0/1 or bool. ``delta >= 1`` caps the weight of a changed token at
    ``1 + delta``; an unchanged token has weight 1, a changed one at least 2. Returns a tensor
    of the same shape (float32 for half-precision inputs) that never requires grad.
    """
    if delta < 1:
        raise ValueError(f"delta must be >= 1 (changed tokens weigh at least 2), got {delta}")
    if token_logps.shape != diff_mask.shape:
        raise ValueError(
            f"diff_mask shape {tuple(diff_mask.shape)} != token_logps {tuple(token_logps.shape)}"
        )
    with torch.no_grad():
        logps = token_logps.detach()
        if logps.dtype in (torch.float16, torch.bfloat16):
            logps = logps.float()
        inverse_p = torch.exp(-logps).clamp(max=delta)  # exp overflow -> inf -> clipped to delta
        return torch.where(diff_mask.bool(), 1.0 + inverse_p, 1.0)


def weighted_sequence_logps(token_logps: Tensor, weights: Tensor | None, mask: Tensor) -> Tensor:
    """``sum_t mask_t * weights_t * token_logps_t`` over the last dimension.

    token_logps, weights, mask: ``[..., T]`` (weights None means all 1; mask marks completion
    tokens). Returns ``[...]``. Padding never reaches the sum, even if it holds NaN.
    """
    terms = token_logps if weights is None else token_logps * weights
    return torch.where(mask.bool(), terms, 0.0).sum(-1)


def bmc_weighted_logps(
    policy_token_logps: Tensor,
    ref_token_logps: Tensor,
    diff_mask: Tensor,
    mask: Tensor,
    *,
    delta: float,
    ref_weights: Literal["policy", "reference"] = "reference",
) -> tuple[Tensor, Tensor]:
    """BMC-weighted sequence log-probs of the policy and of the reference.

    All inputs ``[..., T]`` (mask: completion tokens, diff_mask: from ``bmc_diff_masks``).
    Returns ``(policy_seq, ref_seq)``, each ``[...]``. The policy term is weighted by the
    policy's confidence; the reference term by ``ref_weights`` (see the module docstring).
    Any pair loss can consume the result; the official code length-normalises after
    weighting for IPO.
    """
    if ref_weights not in ("policy", "reference"):
        raise ValueError(f"ref_weights must be 'policy' or 'reference', got {ref_weights!r}")
    policy_w = bmc_token_weights(policy_token_logps, diff_mask, delta=delta)
    if ref_weights == "policy":
        ref_w = policy_w
    else:
        ref_w = bmc_token_weights(ref_token_logps, diff_mask, delta=delta)
    return (
        weighted_sequence_logps(policy_token_logps, policy_w, mask),
        weighted_sequence_logps(ref_token_logps, ref_w, mask),
    )


def pad_rows(rows: Sequence[Sequence[float]], width: int, like: Tensor) -> Tensor:
    """Right-pad per-response lists (diff masks, per-token log-probs) into ``[N, width]`` with
    zeros, on ``like``'s device in float64 (built on the host, sent in one copy)."""
    out = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return to_device(out, like.device)


def bmc_batch_logps(
    token_logps: Tensor,
    response_mask: Tensor,
    diff_masks: Sequence[Sequence[int]],
    ref_token_logps: Sequence[Sequence[float]],
    *,
    delta: float,
    ref_weights: Literal["policy", "reference"] = "reference",
) -> tuple[Tensor, Tensor]:
    """The trainer's BMC step: stored diff masks and reference per-token log-probs (one list
    per response, as the rewrite stage wrote them) plus the policy's per-token log-probs
    ``[N, R]`` and response mask ``[N, R]`` -> weighted sequence log-probs
    ``(policy [N], reference [N])`` via ``bmc_weighted_logps``."""
    width = token_logps.shape[1]
    masks = pad_rows(diff_masks, width, token_logps)
    ref = pad_rows(ref_token_logps, width, token_logps)
    return bmc_weighted_logps(
        token_logps.double(), ref, masks, response_mask, delta=delta, ref_weights=ref_weights
    )
