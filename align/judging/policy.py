"""The policy side of a judge run: the `generate_fn` contract and one for local HF models.

generate_fn(conversations, temperatures, max_new_tokens) -> texts: one reply per conversation
(a list of {role, content} messages ending with a user turn), decoded at that conversation's
temperature (0 = greedy). The caller owns the model; the protocols only call this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

GenerateFn = Callable[[list[list[dict]], list[float], int], list[str]]


def hf_generate_fn(
    model_path: Path | str,
    dtype: str = "float32",
    batch_size: int = 8,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
) -> GenerateFn:
    """A generate_fn over a prepared HF folder, the model on `device`: conversations grouped by
    temperature, batched, each batch reseeded from (seed, temperature, batch index) so reruns
    draw the same texts."""
    from align.generate.hf import generate
    from align.model.loading import load_model, load_tokenizer

    model = load_model(model_path, dtype, device=device)
    tokenizer = load_tokenizer(model_path)

    def generate_fn(
        conversations: list[list[dict]], temperatures: list[float], max_new_tokens: int
    ) -> list[str]:
        out: list[str] = [""] * len(conversations)
        groups: dict[float, list[int]] = {}
        for i, t in enumerate(temperatures):
            groups.setdefault(float(t), []).append(i)
        for t, members in sorted(groups.items()):
            for b in range(0, len(members), batch_size):
                batch = members[b : b + batch_size]
                texts, _ = generate(
                    model,
                    tokenizer,
                    [conversations[i] for i in batch],
                    k=1,
                    max_new_tokens=max_new_tokens,
                    temperature=t,
                    seed=seed * 1_000_003 + int(t * 1000) * 10_007 + b,
                )
                for i, text in zip(batch, texts, strict=True):
                    out[i] = text[0]
        return out

    return generate_fn
