"""Reward and preference sources: `annotate.reward`, `evaluate.reward`, `train.preference`,
`train.aux_rewards`.
"""

from __future__ import annotations

import difflib
import re

from pydantic import Field, model_validator

from align.config.base import Strict
from align.config.judge import JudgeRewardConfig


class RewardConfig(Strict):
    function: str | None = None  # 'module:function' with TRL's reward-function signature
    model: str | None = None  # HF sequence-classification reward model ('tiny-reward' in tests)
    judge: JudgeRewardConfig | None = None  # an LLM judge's 1-10 rating (UltraFeedback style)
    from_data: bool = False  # the dataset already carries rewards (UltraFeedback scores)
    batch_size: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        chosen = [k for k in ("function", "model", "judge") if getattr(self, k)] + (
            ["from_data"] if self.from_data else []
        )
        if len(chosen) != 1:
            raise ValueError("set exactly one of 'function', 'model', 'judge' or 'from_data: true'")
        if self.function and not re.fullmatch(r"[\w.]+:\w+", self.function):
            raise ValueError(f"function: {self.function!r} must look like 'package.module:name'")
        return self


class PreferenceConfig(Strict):
    """Where an online run's labels p = P(y > y') come from (exactly one source)."""

    reward: RewardConfig | None = None  # Bradley-Terry surrogate: p = sigmoid(scale (r - r'))
    scale: float = Field(1.0, gt=0)  # BT only: sharpness of p in the reward difference
    judge: JudgeRewardConfig | None = None  # pairwise LLM judge, both orders averaged
    function: str | None = None  # 'module:function': fn(prompts, a, b, **columns) -> [P(a > b)]

    @model_validator(mode="after")
    def _one_source(self) -> PreferenceConfig:
        chosen = [k for k in ("reward", "judge", "function") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of 'reward' (Bradley-Terry from a reward), 'judge' (pairwise "
                "LLM judge) or 'function' (module:function returning P(a > b))"
            )
        if self.reward is not None and self.reward.from_data:
            raise ValueError(
                "reward.from_data cannot score sampled responses; set function or model"
            )
        if self.function and not re.fullmatch(r"[\w.]+:\w+", self.function):
            raise ValueError(f"function: {self.function!r} must look like 'package.module:name'")
        return self


# UPO's designer rewards (align/rewards/aux.py implements each); the ones that read a classifier
AUX_REWARD_NAMES = ("readability", "brevity", "sentence_end", "safety")
AUX_WITH_MODEL = ("safety",)


class AuxRewardConfig(Strict):
    """One designer reward of UPO: a registered function (align/rewards/aux.py) and its weight."""

    fn: str  # one of AUX_REWARD_NAMES
    weight: float = Field(1.0, ge=0)
    model: str | None = None  # safety only: a local HF sequence-classification folder

    @model_validator(mode="after")
    def _known(self) -> AuxRewardConfig:
        if self.fn not in AUX_REWARD_NAMES:
            hint = difflib.get_close_matches(self.fn, AUX_REWARD_NAMES, n=1)
            raise ValueError(
                f"fn: unknown auxiliary reward {self.fn!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; valid: {', '.join(AUX_REWARD_NAMES)}"
            )
        if (self.fn in AUX_WITH_MODEL) != (self.model is not None):
            raise ValueError(
                f"model: {self.fn!r} needs a classifier folder in 'model'"
                if self.model is None
                else f"model: only 'safety' takes a model; remove it from {self.fn!r}"
            )
        return self
