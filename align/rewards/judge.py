"""An LLM judge as a reward source: 1-10 ratings for annotate and evaluate, pairwise preference
probabilities for online training."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from align.config.judge import JudgeRewardConfig
from align.core.errors import AlignError
from align.llm.open import open_backend
from align.llm.rating import neutral_fill, prefer, rate

log = logging.getLogger("align.rewards")


class RewardJudge:
    """A judge kept open across calls (the local model loads once): 1–10 ratings as rewards,
    and pairwise preference probabilities for the online losses."""

    def __init__(
        self, cfg: JudgeRewardConfig, cache_dir: Path, *, device: torch.device | str = "cpu"
    ):
        self.cfg = cfg
        self.backend = open_backend(cfg.backend, Path(cfg.cache_dir or cache_dir), device=device)

    def rewards(self, prompts: list, completions: list[str]) -> list[float]:
        """One rating per completion; failures raise (on_failure 'error') or become the
        prompt's neutral value (on_failure 'neutral'), with a warning giving the count."""
        ratings = rate(
            self.backend, prompts, completions, self.cfg.template, self.cfg.backend.max_new_tokens
        )
        failed = [r for r in ratings if r.score is None]
        if failed and self.cfg.on_failure == "error":
            raise AlignError(
                f"judge reward: {len(failed)} of {len(ratings)} ratings failed "
                f"(first: {failed[0].error}); re-run to retry (successes are cached), use a "
                "stronger judge, or set on_failure: neutral"
            )
        if failed:
            log.warning(
                "judge reward: %d of %d ratings failed; neutral values used",
                len(failed),
                len(ratings),
            )
        return neutral_fill(prompts, ratings)

    def preferences(self, prompts: list, a: list[str], b: list[str]) -> list[float]:
        """P(a > b) per pair, both orders averaged; 0.5 where both orders failed (counted in
        a warning)."""
        prefs = prefer(self.backend, prompts, a, b, self.cfg.backend.logprobs)
        failed = sum(p.p is None for p in prefs)
        if failed:
            log.warning(
                "judge preference: %d of %d pairs failed in both orders; 0.5 used",
                failed,
                len(prefs),
            )
        return [p.p if p.p is not None else 0.5 for p in prefs]

    def close(self) -> None:
        self.backend.cache.close()
