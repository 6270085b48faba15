"""Reward sources for annotate and evaluate: Python functions and HF reward models.

A reward function has TRL's signature: `fn(prompts, completions, **columns) -> list[float]`,
where `prompts` are message lists, `completions` strings and `columns` the dataset's other
fields (e.g. `answer`), each a list aligned with `completions`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from align.config import RewardConfig
from align.errors import AlignError
from align.io import sha256_file

RewardFn = Callable[..., list[float]]


def load_function(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AlignError(f"reward.function: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AlignError(f"reward.function: {module_name!r} has no function {attr!r}")
    return fn


def reward_fingerprint(cfg: RewardConfig) -> str:
    """What identifies the reward for caching: the function's source file hash, the judge and
    its template, or the model id."""
    if cfg.judge:
        from align.judging.backends import judge_fingerprint

        return f"judge:{judge_fingerprint(cfg.judge.backend)}:{cfg.judge.template}"
    if cfg.function:
        module = importlib.import_module(cfg.function.partition(":")[0])
        return f"{cfg.function}@{sha256_file(Path(module.__file__))[:16]}"
    return cfg.model or "from_data"


class RewardModel:
    """An HF sequence-classification model scoring the chat-formatted (prompt, response)."""

    def __init__(self, source: str):
        from transformers import AutoModelForSequenceClassification

        from align.models import load_tokenizer, resolve_model

        path = resolve_model(source)
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    @torch.no_grad()
    def __call__(
        self, prompts: list[list[dict]], completions: list[str], batch_size: int
    ) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(
                [*p, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in zip(prompts, completions, strict=True)
        ]
        scores: list[float] = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores


class Scorer:
    """Scores (prompt, completion) pairs with the configured reward; checks every value."""

    def __init__(self, cfg: RewardConfig):
        if cfg.from_data:
            raise AlignError("reward.from_data cannot score new responses; set function or model")
        self.cfg = cfg
        self.fn = load_function(cfg.function) if cfg.function else None
        self.rm = RewardModel(cfg.model) if cfg.model else None
        self.judge = None
        if cfg.judge:
            from align.judging.run import RewardJudge
            from align.models import cache_root

            self.judge = RewardJudge(cfg.judge, cache_root() / "judgments")

    def __call__(
        self, prompts: list[list[dict]], completions: list[str], columns: dict[str, list]
    ) -> list[float]:
        if self.fn is not None:
            scores = list(self.fn(prompts, completions, **columns))
        elif self.judge is not None:
            scores = self.judge.rewards(prompts, completions)
        else:
            scores = self.rm(prompts, completions, self.cfg.batch_size)
        name = self.cfg.function or self.cfg.model or "judge"
        if len(scores) != len(completions):
            raise AlignError(
                f"reward {name}: returned {len(scores)} scores for {len(completions)} completions"
            )
        for i, s in enumerate(scores):
            if not isinstance(s, int | float) or not math.isfinite(s):
                raise AlignError(
                    f"reward {name}: completion {i} got {s!r}; rewards must be finite numbers"
                )
        return [float(s) for s in scores]
