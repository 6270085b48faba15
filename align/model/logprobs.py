"""Per-token and per-sequence log-probabilities of response tokens.

Every (prompt, response) pair of a batch is one right-padded row; only response positions count.
The vocabulary softmax runs through `selected_logps`, a chunk of positions at a time in fp32, so
no fp32 copy of the [N, T, V] logits is ever made (on the embedded model's 49k vocabulary that
copy and an unfused logsumexp over it were a third of a training step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from align.core.transfer import to_device
from align.model.cache import cache_kwargs, output_cache

# fp32 elements per softmax chunk: 4 MB, cache-sized on a CPU (21 positions of a 49k vocabulary);
# 256 MB on a GPU, where a chunk is then a whole row of the batch and the loop launches few kernels.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


class _SelectedLogps(torch.autograd.Function):
    """log_softmax(logits)[target] row by row in chunks of at least fp32 precision; backward
    g * (onehot(target) - softmax(logits))."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        out = torch.empty(targets.shape, dtype=dtype, device=logits.device)
        for n, s, e in _chunks(logits):
            logp = torch.log_softmax(logits[n, s:e].to(dtype), dim=-1)
            out[n, s:e] = logp.gather(-1, targets[n, s:e, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for n, s, e in _chunks(logits):
            g = grad[n, s:e, None]
            p = torch.softmax(logits[n, s:e].to(g.dtype), dim=-1).mul_(-g)
            grad_logits[n, s:e] = p.scatter_add_(-1, targets[n, s:e, None], g)
        return grad_logits, None


def _chunks(logits: Tensor):
    """(row n, start, end) covering the [N, T] positions of logits [N, T, V], each chunk at most
    CHUNK_ELEMENTS[device] elements (at least one position)."""
    n_rows, width, vocab = logits.shape
    budget = CHUNK_ELEMENTS.get(logits.device.type, CHUNK_ELEMENTS["cpu"])
    step = max(1, budget // vocab)
    for n in range(n_rows):
        for s in range(0, width, step):
            yield n, s, min(s + step, width)


def selected_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[n, t, targets[n, t]]: logits [N, T, V] (bf16/fp32/fp64, views welcome),
    targets [N, T] -> [N, T] in fp32 (fp64 for fp64 logits), one `_chunks` chunk at a time."""
    return _SelectedLogps.apply(logits, targets)


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
    return selected_logps(logits[:, :-1], input_ids[:, 1:]) * response_mask[:, 1:]


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
    ids, attn, resp = (to_device(t, model.device) for t in (ids, attn, resp))
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return sequence_logps(logits, ids, resp)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows padded on the left to one width: (ids [N, W], attention mask [N, W])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def shared_prompt_logps(
    model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Summed response log-probs [N] and token counts [N] for groups (prompt, [responses]),
    flattened in group order, running each prompt through the model once
    (`shared_prompt_token_logps` summed over tokens)."""
    per_token, r_mask = shared_prompt_token_logps(model, groups, pad_id)
    return per_token.sum(-1), r_mask.sum(-1)


def packed_token_logps(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Per-token response log-probs [N, R] and response mask [N, R] (R the longest response),
    position j scoring response token j, from one forward pass over the packed rows."""
    ids, attn, resp = pack_rows(pairs, pad_id)
    ids, attn, resp = (to_device(t, model.device) for t in (ids, attn, resp))
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    per_token = token_logps(logits, ids, resp)  # [N, T-1]: position t scores token t+1
    width = max(len(r) for _, r in pairs)
    j = torch.arange(width, device=ids.device)
    start = torch.tensor([len(p) - 1 for p, _ in pairs], device=ids.device)
    r_mask = j[None, :] < torch.tensor([len(r) for _, r in pairs], device=ids.device)[:, None]
    index = (start[:, None] + j[None, :]).clamp(max=per_token.shape[1] - 1)
    return per_token.gather(1, index) * r_mask, r_mask


def shared_prompt_token_logps(
    model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Per-token response log-probs [N, R] and response mask [N, R] for groups
    (prompt, [responses]), flattened in group order, running each prompt through the model once.

    The prompts (left-padded) fill a KV cache; each prompt's cache rows are repeated for its
    responses, which run right-padded on top with positions continuing after their prompt.
    The first response token is scored by the prompt's last logits. Same math as
    `model_sequence_logps` on the concatenated rows, with the prompt tokens computed once
    instead of K times; differentiable through the shared prompt."""
    device = model.device
    p_ids, p_mask = left_pad([p for p, _ in groups], pad_id)
    p_ids, p_mask = to_device(p_ids, device), to_device(p_mask, device)
    prompt_out = model(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=(p_mask.cumsum(-1) - 1).clamp_min(0),
        use_cache=True,
        logits_to_keep=1,  # only the last prompt position scores a response token
    )
    owners = to_device(torch.tensor([g for g, (_, rs) in enumerate(groups) for _ in rs]), device)
    cache = output_cache(prompt_out)
    cache.batch_select_indices(owners)
    r_ids, r_attn, r_mask = pack_rows([([], r) for _, rs in groups for r in rs], pad_id)
    r_ids, r_attn, r_mask = (to_device(t, device) for t in (r_ids, r_attn, r_mask))
    prompt_len = p_mask.sum(-1)[owners]
    out = model(
        input_ids=r_ids,
        attention_mask=torch.cat([p_mask[owners], r_attn], dim=1),
        position_ids=prompt_len[:, None] + torch.arange(r_ids.shape[1], device=device),
        use_cache=True,
        **cache_kwargs(cache),
    )
    # response token t is scored by the prompt's last position for t = 0, else by position t - 1
    first = selected_logps(prompt_out.logits[owners, -1:], r_ids[:, :1])
    rest = selected_logps(out.logits[:, :-1], r_ids[:, 1:])
    return torch.cat([first, rest], dim=1) * r_mask, r_mask
