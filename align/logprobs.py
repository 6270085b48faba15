"""Per-token and per-sequence log-probabilities of response tokens.

Every (prompt, response) pair of a batch is one right-padded row; only response positions count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pack_rows(
    pairs: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad `[(prompt_ids, response_ids)]` into input_ids [N, T], attention_mask [N, T] and
    response_mask [N, T] (1 on response tokens)."""
    width = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    resp = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (p, r) in enumerate(pairs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        resp[i, len(p) : n] = True
    return ids, attn, resp


def token_logps(logits: Tensor, input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """log p(token_t | tokens_<t) at response positions, 0 elsewhere: logits [N, T, V] -> [N, T-1].

    Position t of the result scores input_ids[:, t+1] (the causal shift)."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    picked = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps * response_mask[:, 1:]


def sequence_logps(
    logits: Tensor, input_ids: Tensor, response_mask: Tensor, reduction: str = "sum"
) -> tuple[Tensor, Tensor]:
    """(response log-prob [N], response token count [N]); `reduction` 'sum' gives
    sum_t log p(y_t), 'mean' divides it by the token count (length-normalised)."""
    per_token = token_logps(logits, input_ids, response_mask)
    total, count = per_token.sum(-1), response_mask[:, 1:].sum(-1)
    if reduction == "mean":
        return total / count.clamp_min(1), count
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return total, count


def model_sequence_logps(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Forward `model` on the packed pairs and return (summed log-probs [N], token counts [N])."""
    ids, attn, resp = pack_rows(pairs, pad_id)
    ids, attn, resp = ids.to(model.device), attn.to(model.device), resp.to(model.device)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return sequence_logps(logits, ids, resp)
