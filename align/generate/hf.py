"""Batched sampling of K responses per prompt with HF `generate`.

Each prompt is encoded once and expanded K-fold inside `generate` (`num_return_sequences=K`).
The RNG is reseeded per batch from (seed, batch index), so a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from align.model.tokenize import prompt_text


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    *,
    k: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[list[list[str]], list[list[bool]]]:
    """Sample k responses for each prompt (greedy when temperature == 0).

    Returns (texts [P][k], finished [P][k]); finished is False when max_new_tokens cut it off."""
    texts = [prompt_text(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        model.device
    )
    greedy = temperature == 0
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None,
        num_return_sequences=k,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc.input_ids.shape[1] :]
    finished = (new == tokenizer.eos_token_id).any(dim=1).tolist()
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return (
        [decoded[i * k : (i + 1) * k] for i in range(len(prompts))],
        [finished[i * k : (i + 1) * k] for i in range(len(prompts))],
    )
