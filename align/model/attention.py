"""`train.attention: matmul`: attention as two batched matmuls per key/value head.

softmax(q k^T * scale + mask) v with the query heads that share a key/value head (grouped-query
attention) stacked into one [G * T, D] matrix, so no key or value is repeated and each matmul is
G times taller. Softmax and its backward accumulate in fp32 (one fused pass each); the backward
keeps only the probabilities (in the inputs' dtype) and recomputes nothing. On a CPU in bf16
this is faster than torch's fused scaled-dot-product kernel (BENCHMARKS.md), at the price of
O(T * S) memory per layer.
Registered with transformers as `MATMUL_ATTENTION`, taking the same boolean masks as `sdpa`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

MATMUL_ATTENTION = "align_matmul"


class _GroupedAttention(torch.autograd.Function):
    """q [B, Hk, G*T, D], k, v [B, Hk, S, D], keep [B, 1, 1, T, S] (bool, True = attend)
    -> softmax(q k^T * scale, masked) v [B, Hk, G*T, D]; 0 for a query that sees no key."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float) -> Tensor:
        b, hk, m, _ = q.shape
        t, s = keep.shape[-2:]
        scores = torch.matmul(q * scale, k.transpose(-1, -2))  # scaling q: G*T*D, not G*T*S
        # masked scores become the dtype's minimum (|score| is below its ulp there); adding a
        # bias of keep's shape measured 3.6x faster than masked_fill_ with the broadcast mask
        bias = torch.zeros(keep.shape, dtype=scores.dtype, device=scores.device)
        scores.view(b, hk, m // t, t, s).add_(bias.masked_fill_(~keep, torch.finfo(bias.dtype).min))
        probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 for bf16 inputs
        empty = ~keep.any(-1, keepdim=True)  # a query that may see no key (left padding)
        if empty.any():
            probs.view(b, hk, m // t, t, s).masked_fill_(empty, 0.0)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.matmul(probs, v)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, probs = ctx.saved_tensors
        grad = grad.to(q.dtype)
        grad_v = torch.matmul(probs.transpose(-1, -2), grad)
        grad_p = torch.matmul(grad, v.transpose(-1, -2))
        # dS = p * (dP - sum_j p_j dP_j) in one fused pass (fp32 accumulation); p = 0 where masked
        grad_s = torch.ops.aten._softmax_backward_data(grad_p, probs, -1, probs.dtype)
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale)
        # (q^T dS)^T: measured faster on a CPU than dS^T q (a transposed result, not operand)
        grad_k = torch.matmul(q.transpose(-1, -2), grad_s).mul_(ctx.scale).transpose(-1, -2)
        return grad_q, grad_k, grad_v, None, None


def matmul_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers' attention signature: query [B, H, T, D], key/value [B, Hk, S, D], boolean
    mask [B, 1, T, S] or None (causal, aligned to the last key) -> output [B, T, H, D]."""
    if dropout or kwargs.get("softcap") or kwargs.get("sliding_window"):
        raise ValueError(
            "train.attention: matmul supports neither attention dropout, soft-capping nor "
            "sliding windows; use train.attention: sdpa for this model"
        )
    b, h, t, d = query.shape
    hk, s = key.shape[1], key.shape[2]
    if attention_mask is None:
        attention_mask = torch.ones(t, s, dtype=torch.bool, device=query.device).tril(s - t)
    keep = attention_mask.expand(b, 1, t, s).unsqueeze(2)
    scale = scaling if scaling is not None else d**-0.5
    out = _GroupedAttention.apply(query.reshape(b, hk, h // hk * t, d), key, value, keep, scale)
    return out.view(b, h, t, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(MATMUL_ATTENTION, matmul_attention)
AttentionMaskInterface.register(MATMUL_ATTENTION, sdpa_mask)
