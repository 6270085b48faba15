"""The policy side of a judge run: the `generate_fn` contract, one for local HF models and one
for a vLLM engine (`judge.policy_backend`).

generate_fn(conversations, temperatures, max_new_tokens) -> texts: one reply per conversation
(a list of {role, content} messages ending with a user turn), decoded at that conversation's
temperature (0 = greedy). The caller owns the model or engine; the protocols only call this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from align.generate.vllm_engine import VLLMSampler

GenerateFn = Callable[[list[list[dict]], list[float], int], list[str]]
# answer(conversations, temperature, seed, max_new_tokens) -> one reply per conversation
Answer = Callable[[list[list[dict]], float, int, int], list[str]]


def _by_temperature(answer: Answer, batch_size: int, seed: int) -> GenerateFn:
    """A generate_fn that groups the conversations by temperature and calls `answer` on batches
    of at most `batch_size`, each seeded from (seed, temperature, batch start), so a rerun
    draws the same texts."""

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
                texts = answer(
                    [conversations[i] for i in batch],
                    t,
                    seed * 1_000_003 + int(t * 1000) * 10_007 + b,
                    max_new_tokens,
                )
                for i, text in zip(batch, texts, strict=True):
                    out[i] = text
        return out

    return generate_fn


def hf_generate_fn(
    model_path: Path | str,
    dtype: str = "float32",
    batch_size: int = 8,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
) -> GenerateFn:
    """A generate_fn over a prepared HF folder, the model on `device`, `batch_size`
    conversations per generate call."""
    from align.generate.hf import generate
    from align.model.loading import load_model, load_tokenizer

    model = load_model(model_path, dtype, device=device)
    tokenizer = load_tokenizer(model_path)

    def answer(convs: list[list[dict]], t: float, batch_seed: int, max_new: int) -> list[str]:
        texts, _ = generate(
            model, tokenizer, convs, k=1, max_new_tokens=max_new, temperature=t, seed=batch_seed
        )
        return [text[0] for text in texts]

    return _by_temperature(answer, batch_size, seed)


def vllm_generate_fn(engine: VLLMSampler, tokenizer, seed: int = 0) -> GenerateFn:
    """A generate_fn over a running vLLM engine (its owner shuts it down): every conversation of
    a temperature goes in one call, which vLLM schedules itself."""

    def answer(convs: list[list[dict]], t: float, batch_seed: int, max_new: int) -> list[str]:
        texts, _ = engine.generate(
            tokenizer, convs, k=1, max_new_tokens=max_new, temperature=t, seed=batch_seed
        )
        return [text[0] for text in texts]

    return _by_temperature(answer, batch_size=1 << 30, seed=seed)
