"""Our trainer on the benchmark rows, tokenised exactly as TRL tokenises plain-text pairs
(prompt ids, then the completion's ids + end-of-turn), reference log-probs precomputed as the
annotate stage does."""

from __future__ import annotations

from pathlib import Path

import torch

from align.config import validate_dict
from align.model.loading import load_model, load_tokenizer
from align.model.logprobs import shared_prompt_logps
from align.train.examples import Example
from align.train.trainer import Trainer


def encode_like_trl(tokenizer, row: dict) -> tuple[list[int], list[list[int]]]:
    prompt = tokenizer(row["prompt"], add_special_tokens=False).input_ids
    responses = []
    for key in ("chosen", "rejected"):
        full = tokenizer(
            row["prompt"] + row[key] + tokenizer.eos_token, add_special_tokens=False
        ).input_ids
        responses.append(full[len(prompt) :])
    return prompt, responses


@torch.no_grad()
def reference_logps(
    path: Path, groups: list[tuple[list[int], list[list[int]]]]
) -> list[list[float]]:
    model, tok = load_model(path, device="cpu"), load_tokenizer(path)
    out = []
    for group in groups:
        s, _ = shared_prompt_logps(model, [group], tok.pad_token_id)
        out.append(s.tolist())
    return out


def our_trainer(
    path: Path,
    rows: list[dict],
    batch: int,
    out: Path,
    *,
    precision: str,
    share_prompt: bool,
    max_steps: int,
    attention: str = "sdpa",
    loss: dict | None = None,
    groups: list[tuple[list[int], list[list[int]]]] | None = None,
    rewards: list[list[float]] | None = None,
) -> Trainer:
    """A Trainer whose examples are the given token ids (default: `rows` as TRL sees them)."""
    tok = load_tokenizer(path)
    groups = groups or [encode_like_trl(tok, r) for r in rows]
    rewards = rewards or [[1.0, 0.0]] * len(groups)
    refs = reference_logps(path, groups)
    cfg = validate_dict(
        {
            "name": "bench",
            "model": {"policy": str(path)},
            "data": {"train": {"path": "unused.jsonl", "format": "kwise"}},
            "annotate": {"reward": {"from_data": True}},
            "train": {
                "loss": loss or {"name": "dpo", "beta": 0.1},
                "learning_rate": 1e-6,
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "batch_size": batch,
                "max_steps": max_steps,
                "precision": precision,
                "share_prompt": share_prompt,
                "attention": attention,
                "max_length": 4096,
                "max_prompt_length": 2048,
                "max_grad_norm": None,
            },
        },
        "bench",
    )
    records = [
        {
            "id": str(i),
            "prompt": [{"role": "user", "content": "x"}],
            "responses": ["a"] * len(g[1]),
            "rewards": r,
            "ref_logps": ref,
        }
        for i, (g, r, ref) in enumerate(zip(groups, rewards, refs, strict=True))
    ]
    trainer = Trainer(cfg, path, records, out, "bench")
    trainer.examples = [
        Example(p, rs, r, ref) for (p, rs), r, ref in zip(groups, rewards, refs, strict=True)
    ]
    return trainer
