"""Per-token and per-sequence log-probabilities of response tokens.

Every (prompt, response) pair of a batch is one right-padded row; only response positions count.
The vocabulary softmax runs through `selected_logps`, a chunk of positions at a time in fp32, so
no fp32 copy of the [N, T, V] logits is ever made (on the embedded model's 49k vocabulary that
copy and an unfused logsumexp over it were a third of a training step).

Where the model's output projection (LM head) is whole in this process (not sharded by FSDP or
ZeRO-3), the forward stops at the final hidden states and `head_selected_logps` projects a
chunk of positions at a time, recomputing the chunk in the backward: the [N, T, V] logits are
never materialised at all (at a 32k vocabulary and 4k tokens: 256 MB of bf16 logits plus their
gradient).
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


class _HeadSelectedLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[target] a chunk of positions at a time; the backward
    recomputes each chunk's logits: grad_logits = g * (onehot(target) - softmax), then
    grad_hidden = grad_logits @ weight and grad_weight = grad_logits.T @ hidden."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        device = hidden.device.type
        dtype = (
            torch.get_autocast_dtype(device)
            if torch.is_autocast_enabled(device)
            else torch.promote_types(hidden.dtype, weight.dtype)
        )
        out = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        with torch.autocast(device, enabled=False):
            for n, s, e in _chunks_of(targets.shape, weight.shape[0], device):
                logits = (hidden[n, s:e].to(dtype) @ w.T).float()
                logp = torch.log_softmax(logits, dim=-1)
                out[n, s:e] = logp.gather(-1, targets[n, s:e, None]).squeeze(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        hidden, weight, targets = ctx.saved_tensors
        device, dtype = hidden.device.type, ctx.dtype
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        with torch.autocast(device, enabled=False):
            for n, s, e in _chunks_of(targets.shape, weight.shape[0], device):
                h = hidden[n, s:e].to(dtype)
                g = grad[n, s:e, None].float()
                p = torch.softmax((h @ w.T).float(), dim=-1).mul_(-g)
                g_logits = p.scatter_add_(-1, targets[n, s:e, None], g).to(dtype)
                if grad_hidden is not None:
                    grad_hidden[n, s:e] = g_logits @ w
                if grad_weight is not None:
                    grad_weight += (g_logits.T @ h).float()
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None,
        )


def _chunks_of(shape: torch.Size, vocab: int, device: str):
    """(row n, start, end) covering [N, T] positions in chunks of at most CHUNK_ELEMENTS[device]
    logits each (at least one position)."""
    n_rows, width = shape
    step = max(1, CHUNK_ELEMENTS.get(device, CHUNK_ELEMENTS["cpu"]) // vocab)
    for n in range(n_rows):
        for s in range(0, width, step):
            yield n, s, min(s + step, width)


def head_selected_logps(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """log softmax(hidden @ weight.T)[n, t, targets[n, t]] without ever holding the [N, T, V]
    logits: hidden [N, T, H] (final, normalised hidden states), weight [V, H] (the LM head),
    targets [N, T] -> [N, T] fp32. Matmuls in the autocast dtype when autocast is on."""
    return _HeadSelectedLogps.apply(hidden, weight, targets)


def _whole_head(model) -> Tensor | None:
    """The LM head's weight [V, H] when this process holds it whole and the head is a plain
    bias-free projection; None otherwise (FSDP and ZeRO-3 shard it; then the model's own
    logits are used)."""
    if _sharded(model):
        return None
    inner = getattr(model, "module", model)  # DDP keeps the model as .module
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    weight = getattr(head, "weight", None)
    if (
        not isinstance(head, torch.nn.Linear)
        or head.bias is not None
        or weight is None
        or weight.dim() != 2
        or weight.shape[0] != inner.config.vocab_size
    ):
        return None
    return weight


def _sharded(model) -> bool:
    """Whether FSDP manages `model`'s parameters (FSDP1 wrapper, or FSDP2's DTensor
    parameters): its gradients then flow only through the wrapped forward."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if isinstance(model, FullyShardedDataParallel):
        return True
    return any(isinstance(p, DTensor) for p in model.parameters())


def next_token_logps(model, targets: Tensor, **inputs) -> tuple[Tensor, object]:
    """(log p(targets[n, t] | the tokens up to position t) [N, T] fp32, the model's output) of
    one forward over `inputs` (input_ids [N, T], masks, cache...). The vocabulary projection is
    `head_selected_logps` where the head is whole here, else the model's logits."""
    weight = _whole_head(model)
    if weight is None:
        out = model(**inputs)
        return selected_logps(out.logits, targets), out
    no_logits = torch.zeros(0, dtype=torch.long, device=targets.device)
    out = model(**inputs, output_hidden_states=True, logits_to_keep=no_logits)
    return head_selected_logps(out.hidden_states[-1], weight, targets), out


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
    per_token, resp = _packed_scores(model, pairs, pad_id)
    return per_token.sum(-1), resp[:, 1:].sum(-1)


def _packed_scores(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """(log-prob of each next token at response positions, 0 elsewhere [N, T-1] (position t
    scores token t+1), response mask [N, T]) of one forward over the packed pairs."""
    ids, attn, resp = pack_rows(pairs, pad_id)
    ids, attn, resp = (to_device(t, model.device) for t in (ids, attn, resp))
    scores, _ = next_token_logps(
        model, ids.roll(-1, dims=1), input_ids=ids, attention_mask=attn, use_cache=False
    )
    return scores[:, :-1] * resp[:, 1:], resp


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
    per_token, _ = _packed_scores(model, pairs, pad_id)  # position t scores token t+1
    width = max(len(r) for _, r in pairs)
    device = per_token.device
    j = torch.arange(width, device=device)
    start = to_device(torch.tensor([len(p) - 1 for p, _ in pairs]), device)
    r_mask = j[None, :] < to_device(torch.tensor([len(r) for _, r in pairs]), device)[:, None]
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
    scores, _ = next_token_logps(
        model,
        r_ids.roll(-1, dims=1),
        input_ids=r_ids,
        attention_mask=torch.cat([p_mask[owners], r_attn], dim=1),
        position_ids=prompt_len[:, None] + torch.arange(r_ids.shape[1], device=device),
        use_cache=True,
        **cache_kwargs(cache),
    )
    # response token t is scored by the prompt's last position for t = 0, else by position t - 1
    first = selected_logps(prompt_out.logits[owners, -1:], r_ids[:, :1])
    return torch.cat([first, scores[:, :-1]], dim=1) * r_mask, r_mask
