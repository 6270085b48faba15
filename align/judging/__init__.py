"""LLM-as-judge evaluation and judge-based rewards (ALGORITHMS.md §6; docs/judging.md).

Entry points: `run_judge` (MT-Bench and AlpacaEval for one policy) and `judge_rewards` /
`RewardJudge` (ratings and pairwise preferences for annotation and online losses), configured
by `JudgeConfig` / `JudgeRewardConfig`.
"""

from align.judging.config import (
    AlpacaEvalConfig,
    BackendConfig,
    JudgeConfig,
    JudgeRewardConfig,
    MTBenchConfig,
)
from align.judging.run import RewardJudge, judge_rewards, run_judge

__all__ = [
    "AlpacaEvalConfig",
    "BackendConfig",
    "JudgeConfig",
    "JudgeRewardConfig",
    "MTBenchConfig",
    "RewardJudge",
    "judge_rewards",
    "run_judge",
]
