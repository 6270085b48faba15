"""Preference sources for online training: p = P(y > y' | x) for sampled pairs (y, y').

- `reward`: the Bradley-Terry surrogate ``p = sigmoid(scale * (r(x, y) - r(x, y')))`` from any
  reward the annotate stage accepts (a function, a reward model, a judge's rating). A scalar
  reward cannot express intransitive preferences (A > B > C > A), so with it Nash-MD's
  game-theoretic target collapses to reward maximisation with a KL penalty.
- `judge`: a pairwise LLM judge; each pair is asked in both orders and the two answers are
  averaged to remove position bias; a pair that fails in both orders counts as a tie.
- `function`: ``fn(prompts, a, b, **columns) -> list[float]``, one probability per pair.

Equal rewards give p = 1/2 exactly: a tie is a tie, never "the first one wins".
"""

from __future__ import annotations

import torch

from align.config import PreferenceConfig, RewardConfig
from align.core.usercode import user_code
from align.rewards import (
    Scorer,
    checked_numbers,
    load_function,
    numbers_returned,
    reward_fingerprint,
)


def preference_fingerprint(cfg: PreferenceConfig) -> str:
    """What identifies the preference source in the train stage's hash."""
    if cfg.reward is not None:
        return f"bt:{cfg.scale}:{reward_fingerprint(cfg.reward)}"
    if cfg.judge is not None:
        return "pairwise-" + reward_fingerprint(RewardConfig(judge=cfg.judge))
    return "fn:" + reward_fingerprint(RewardConfig(function=cfg.function))


def bradley_terry(rewards_a: list[float], rewards_b: list[float], scale: float) -> list[float]:
    """``sigmoid(scale * (r_a - r_b))`` per pair; equal rewards give exactly 0.5."""
    diff = torch.tensor(rewards_a, dtype=torch.float64) - torch.tensor(
        rewards_b, dtype=torch.float64
    )
    return torch.sigmoid(scale * diff).tolist()


class Preference:
    """Callable ``(prompts, a, b, columns) -> [P(a_i > b_i)]`` for the configured source;
    `columns` are the prompts' extra dataset fields (e.g. `answer`), aligned with the pairs."""

    FIELD = "train.preference"

    def __init__(self, cfg: PreferenceConfig, *, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.scorer = (
            Scorer(cfg.reward, f"{self.FIELD}.reward", device=device) if cfg.reward else None
        )
        self.judge = None
        if cfg.judge is not None:
            from align.model.loading import cache_root
            from align.rewards.judge import RewardJudge

            self.judge = RewardJudge(cfg.judge, cache_root() / "judgments", device=device)
        self.fn = load_function(cfg.function) if cfg.function else None

    def __call__(
        self, prompts: list, a: list[str], b: list[str], columns: dict[str, list]
    ) -> list[float]:
        if self.scorer is not None:
            both = self.scorer(prompts + prompts, a + b, {k: v + v for k, v in columns.items()})
            return bradley_terry(both[: len(a)], both[len(a) :], self.cfg.scale)
        if self.judge is not None:
            return self.judge.preferences(prompts, a, b)
        return self._from_function(prompts, a, b, columns)

    def _from_function(
        self, prompts: list, a: list[str], b: list[str], columns: dict[str, list]
    ) -> list[float]:
        where = f"{self.FIELD}.function: {self.cfg.function}"
        with user_code(where, "fix the function"):
            probs = self.fn(prompts, a, b, **columns)
        probs = numbers_returned(probs, where, "probabilities")
        return checked_numbers(
            probs,
            [f"pair {i}" for i in range(len(a))],
            where,
            f"{where}: returned {len(probs)} values for {len(a)} pairs; return one "
            "probability P(a > b) per pair, in order",
            lambda p: 0 <= p <= 1,
            "return probabilities in [0, 1] (0.5 = tie)",
        )

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()
